//! Checks a script before any sandbox is spent on it, and produces the [`Script`] newtype the
//! sandbox requires. These checks exist for clear errors; nsjail is the security boundary.

/// A script that passed [`validate`]; only it can construct one.
#[derive(Debug, Clone)]
pub struct Script(String);

impl Script {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a script was refused before running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("the script is empty: send Python source that defines main()")]
    Empty,
    #[error("the script is {actual} bytes of UTF-8; the limit is {limit} bytes")]
    TooLarge { actual: usize, limit: usize },
}

/// Accepts a non-blank script of at most `max_bytes` bytes of UTF-8 (exactly `max_bytes` is fine).
pub fn validate(source: String, max_bytes: usize) -> Result<Script, ValidationError> {
    if source.len() > max_bytes {
        return Err(ValidationError::TooLarge {
            actual: source.len(),
            limit: max_bytes,
        });
    }
    if source.trim().is_empty() {
        return Err(ValidationError::Empty);
    }
    Ok(Script(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive_and_counts_utf8_bytes() {
        assert!(validate("#".repeat(100), 100).is_ok());
        assert_eq!(
            validate("é".repeat(51), 100).unwrap_err(),
            ValidationError::TooLarge {
                actual: 102,
                limit: 100
            }
        );
    }

    #[test]
    fn blank_scripts_are_refused() {
        assert_eq!(
            validate(" \n\t".to_owned(), 100).unwrap_err(),
            ValidationError::Empty
        );
        assert_eq!(
            validate(String::new(), 100).unwrap_err(),
            ValidationError::Empty
        );
    }
}
