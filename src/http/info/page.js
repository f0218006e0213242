
'use strict';
// The page's only code. Everything it shows is put in the DOM as text (textContent, append of
// strings, attribute values), never parsed as HTML: what a script prints stays text.
(function () {
  const data = JSON.parse(document.getElementById('pyexec-data').textContent);
  const info = data.info;
  const byId = (id) => document.getElementById(id);

  /** An element with these attributes and children (nodes, or strings appended as text). */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  // What the service is.
  byId('version').textContent = 'v' + info.version;
  byId('description').textContent = info.description;

  // The sandbox: the active profile and what it guarantees here.
  const items = (list, none) => list.length
    ? list.map((item) => el('li', {}, item))
    : [el('li', { class: 'muted', 'data-none': '' }, none)];
  byId('profile').textContent = info.isolation.profile;
  byId('limits-backend').textContent = info.isolation.limits;
  byId('guarantees').replaceChildren(...items(info.isolation.guarantees, 'nothing'));
  byId('not-isolated').replaceChildren(
    ...items(info.isolation.not_isolated, 'nothing: every guarantee above holds'));

  // The limits, in words and in the exact number the setting holds.
  const LIMIT_NAMES = {
    script_bytes: 'Script (UTF-8)',
    time_limit_ms: 'Wall time',
    cpu_secs: 'CPU time',
    memory_bytes: 'Memory',
    min_memory_bytes: 'Least memory a run may ask for',
    processes: 'Processes and threads',
    output_bytes: 'stdout, and stderr, each',
    result_bytes: 'Result, as JSON',
    tmp_bytes: 'Size of /tmp',
    file_bytes: 'Largest file',
    open_files: 'Open files per process',
    input_files: 'Files sent with a script',
    input_bytes: 'Files sent, in all',
    output_files: 'Files sent back',
    output_files_bytes: 'Files sent back, in all',
  };
  function size(bytes) {
    for (const [unit, scale] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]]) {
      if (bytes >= scale && bytes % scale === 0) return `${bytes / scale} ${unit}`;
    }
    return `${bytes.toLocaleString('en')} bytes`;
  }
  function inWords(name, value) {
    if (typeof value !== 'number') return String(value);
    if (name.endsWith('_bytes')) return size(value);
    if (name.endsWith('_ms')) return value % 1000 === 0 ? `${value / 1000} s` : `${value} ms`;
    if (name.endsWith('_secs')) return `${value} s`;
    return value.toLocaleString('en');
  }
  byId('limits').replaceChildren(...Object.entries(info.limits).map(([name, value]) =>
    el('tr', { 'data-limit': name },
      el('th', { scope: 'row' }, LIMIT_NAMES[name] || name),
      el('td', {}, el('data', { value: String(value) }, inWords(name, value))),
      el('td', {}, el('code', {}, name)))));

  // What a script can import.
  byId('python').textContent = info.python || 'of a version not known yet';
  byId('packages').replaceChildren(...(info.packages.length
    ? info.packages.map((p) => el('tr', { 'data-package': p.name },
      el('th', { scope: 'row' }, p.name), el('td', {}, p.version)))
    : [el('tr', {}, el('td', { colspan: '2', class: 'muted' },
      'none listed: the sandbox had not started'))]));

  byId('endpoints').replaceChildren(...info.endpoints.map((endpoint) => {
    const path = endpoint.method === 'GET' && endpoint.path.startsWith('/')
      ? el('a', { href: endpoint.path }, endpoint.path)
      : el('code', {}, endpoint.path);
    return el('tr', {}, el('td', {}, endpoint.method), el('td', {}, path),
      el('td', {}, endpoint.description));
  }));

  // The form.
  const form = byId('run-form');
  const script = byId('script');
  const run = byId('run');
  const status = byId('status');
  const outcome = byId('outcome');
  const encoder = new TextEncoder();
  function showSize() {
    const bytes = encoder.encode(script.value).length;
    const limit = info.limits.script_bytes;
    byId('script-size').textContent =
      `${bytes.toLocaleString('en')} of ${limit.toLocaleString('en')} bytes` +
      (bytes > limit ? ': too large to run' : '');
  }
  script.addEventListener('input', showSize);
  const runOnCtrlEnter = (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  };
  script.addEventListener('keydown', runOnCtrlEnter);

  // The request's other fields: an input for main(input), files, return_files, limits,
  // strict_result. Each is checked here, before anything is sent, against what the service
  // takes (its limits are in `info`); the service checks again.
  const input = byId('input');
  const picker = byId('files');
  const clearFiles = byId('files-clear');
  const returnFiles = byId('return-files');
  const strict = byId('strict-result');
  const runLimits = byId('run-limits');
  input.addEventListener('keydown', runOnCtrlEnter);

  /** Shows `message` under a field (or clears it), marking the fields it is about. */
  function fieldError(box, fields, message) {
    box.textContent = message || '';
    box.hidden = !message;
    for (const field of fields) {
      if (message) field.setAttribute('aria-invalid', 'true');
      else field.removeAttribute('aria-invalid');
    }
  }
  const inputError = byId('input-error');
  // Editing a field takes back its message (`change` too: a field emptied by a tool).
  for (const type of ['input', 'change']) {
    input.addEventListener(type, () => fieldError(inputError, [input], ''));
  }

  /** `{text}`: the input as JSON text (null when the field is empty), or `{problem}`. */
  function inputJson() {
    const text = input.value.trim();
    if (!text) return { text: null };
    try {
      JSON.parse(text);
    } catch (error) {
      return { problem: `The input is not JSON (${error.message}). `
        + 'Leave it empty to call main() without one.' };
    }
    // Sent as written rather than re-encoded, so big integers keep every digit.
    return { text };
  }

  const { input_files: maxFiles, input_bytes: maxFileBytes } = info.limits;
  /** "1 file", "2,048 files". */
  const counted = (count, noun) => `${count.toLocaleString('en')} ${noun}${count === 1 ? '' : 's'}`;
  const bytes = (count) => counted(count, 'byte');
  /** Why the chosen files cannot be sent, or ''. */
  function filesProblem(files) {
    const total = files.reduce((sum, file) => sum + file.size, 0);
    if (files.length > maxFiles) {
      return `${files.length} files: the service takes at most ${maxFiles} (limits.input_files).`;
    }
    if (total > maxFileBytes) {
      return `${bytes(total)} in all: the service takes at most ${size(maxFileBytes)} `
        + '(limits.input_bytes).';
    }
    return '';
  }
  function showFiles() {
    const files = Array.from(picker.files);
    const summary = byId('files-summary');
    clearFiles.disabled = !files.length;
    const problem = filesProblem(files);
    if (problem) picker.setAttribute('aria-invalid', 'true');
    else picker.removeAttribute('aria-invalid');
    summary.className = problem ? 'field-error' : 'muted';
    if (!files.length) {
      summary.textContent = 'No files chosen.';
      return;
    }
    const total = files.reduce((sum, file) => sum + file.size, 0);
    summary.replaceChildren(
      `${counted(files.length, 'file')}, ${bytes(total)} in all: `,
      ...files.flatMap((file, index) => [index ? ', ' : '',
        el('code', { 'data-chosen': file.name }, file.name), ` (${bytes(file.size)})`]),
      problem ? `. Not sent: ${problem}` : '');
  }
  picker.addEventListener('change', showFiles);
  clearFiles.addEventListener('click', () => {
    picker.value = '';
    showFiles();
    picker.focus();
  });
  showFiles();

  /** Bytes as base64, by the browser's own encoder where it has one. */
  function toBase64(data) {
    if (typeof data.toBase64 === 'function') return data.toBase64();
    let binary = '';
    for (let at = 0; at < data.length; at += 0x8000) {
      binary += String.fromCharCode.apply(null, data.subarray(at, at + 0x8000));
    }
    return btoa(binary);
  }
  function fromBase64(text) {
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(text);
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  }

  // Limits for one run: what the service allows (time from 1 ms, memory from the floor
  // `GET /` publishes, output from 0 bytes), in the unit each field takes.
  const MiB = 2 ** 20;
  const LIMIT_FIELDS = [
    { id: 'limit-time', name: 'time_ms', what: 'The wall time', unit: 1, units: 'ms',
      min: 1, max: info.limits.time_limit_ms },
    { id: 'limit-memory', name: 'memory_bytes', what: 'The memory', unit: MiB, units: 'MiB',
      min: Math.ceil(info.limits.min_memory_bytes / MiB),
      max: Math.floor(info.limits.memory_bytes / MiB) },
    { id: 'limit-output', name: 'output_bytes', what: 'The output', unit: 1, units: 'bytes',
      min: 0, max: info.limits.output_bytes },
  ];
  const limitsError = byId('limits-error');
  for (const limit of LIMIT_FIELDS) {
    limit.field = byId(limit.id);
    limit.field.placeholder = `${limit.max}`;
    byId(`${limit.id}-range`).textContent =
      `${limit.min.toLocaleString('en')} to ${limit.max.toLocaleString('en')}`;
    for (const type of ['input', 'change']) {
      limit.field.addEventListener(type, () => fieldError(limitsError,
        LIMIT_FIELDS.map((other) => other.field), ''));
    }
  }
  /** `{limits}`: those given, as the request's `limits` (null when none), or `{field, problem}`. */
  function requestLimits() {
    const limits = {};
    for (const limit of LIMIT_FIELDS) {
      const text = limit.field.value.trim();
      if (!text) continue;
      const value = /^[0-9]+$/.test(text) ? Number(text) : NaN;
      if (!(value >= limit.min && value <= limit.max)) {
        return { field: limit.field, problem: `${limit.what} must be a whole number of `
          + `${limit.units} from ${limit.min.toLocaleString('en')} to `
          + `${limit.max.toLocaleString('en')}.` };
      }
      limits[limit.name] = value * limit.unit;
    }
    return { limits: Object.keys(limits).length ? limits : null };
  }

  /** `{body}`: the request as JSON text, or `{problem}`, shown by the field it is about (which
   * gets the focus), when it cannot be sent. Reads the chosen files. */
  async function requestBody() {
    const given = inputJson();
    if (given.problem) {
      fieldError(inputError, [input], given.problem);
      input.focus();
      return given;
    }
    const checked = requestLimits();
    if (checked.problem) {
      fieldError(limitsError, [checked.field], checked.problem);
      runLimits.open = true;
      checked.field.focus();
      return checked;
    }
    const chosen = Array.from(picker.files);
    const refused = filesProblem(chosen);
    if (refused) {
      showFiles();
      picker.focus();
      return { problem: refused };
    }
    const request = { script: script.value };
    if (chosen.length) {
      status.textContent = 'Reading the files…';
      try {
        request.files = await Promise.all(chosen.map(async (file) => ({
          path: file.name,
          content: toBase64(new Uint8Array(await file.arrayBuffer())),
          encoding: 'base64',
        })));
      } catch (error) {
        const problem = `A file could not be read (${error.message}): choose it again.`;
        const summary = byId('files-summary');
        summary.className = 'field-error';
        summary.textContent = problem;
        picker.focus();
        return { problem };
      }
    }
    if (returnFiles.checked) request.return_files = true;
    if (checked.limits) request.limits = checked.limits;
    if (strict.checked) request.strict_result = true;
    const body = JSON.stringify(request);
    return { body: given.text === null ? body : `${body.slice(0, -1)},"input":${given.text}}` };
  }

  byId('examples').replaceChildren(...data.examples.map((example) => {
    const described = `example-${example.name}`;
    const button = el('button', { type: 'button', 'data-example': example.name,
      'aria-describedby': described }, example.name);
    button.addEventListener('click', () => {
      script.value = example.script;
      showSize();
      status.textContent = `The example ${example.name} is in the form: press Run.`;
      script.focus();
    });
    return el('li', {}, button, ' ', el('span', { id: described }, example.title),
      el('span', { class: 'expect' }, `answers ${example.expect}`));
  }));
  script.value = data.examples.length ? data.examples[0].script : 'def main():\n    return 1\n';
  showSize();

  /** The body as JSON, or undefined. Numbers JSON.parse would round (big integers, 1e400) keep
   * every digit where the browser can say what they were (JSON.rawJSON). */
  function parse(text) {
    try {
      return JSON.parse(text, function (key, value, context) {
        if (typeof value === 'number' && context && typeof context.source === 'string'
          && typeof JSON.rawJSON === 'function' && String(value) !== context.source) {
          return JSON.rawJSON(context.source);
        }
        return value;
      });
    } catch (error) {
      return undefined;
    }
  }

  /** Any JSON value as nodes: objects as a definition list, so every code's details show. */
  function describe(value) {
    if (value === null || value === undefined) return el('span', { class: 'muted' }, 'null');
    if (typeof JSON.isRawJSON === 'function' && JSON.isRawJSON(value)) {
      return el('code', {}, value.rawJSON);
    }
    if (Array.isArray(value)) {
      return value.length
        ? el('ul', {}, ...value.map((item) => el('li', {}, describe(item))))
        : el('span', { class: 'muted' }, '(none)');
    }
    if (typeof value === 'object') {
      const list = el('dl');
      for (const [name, item] of Object.entries(value)) {
        list.append(el('dt', {}, name), el('dd', { 'data-field': name }, describe(item)));
      }
      return list;
    }
    if (typeof value === 'string' && value.includes('\n')) return el('pre', {}, value);
    return el('code', {}, String(value));
  }

  // Fields every script's answer has; the rest of an error body are its code's details.
  const OUTPUT = ['stdout', 'stderr', 'stdout_truncated', 'stderr_truncated', 'duration_ms'];
  // Fields of a success shown on their own below the result.
  const SHOWN = ['result', 'nulls', 'files', 'files_truncated', 'skipped_files', 'limits'];

  const isRaw = (value) => typeof JSON.isRawJSON === 'function' && JSON.isRawJSON(value);
  const isRecord = (value) => value !== null && typeof value === 'object'
    && !Array.isArray(value) && !isRaw(value);
  /** A DataFrame as the service maps it: a non-empty list of row objects. */
  const isRecords = (value) => Array.isArray(value) && value.length > 0
    && value.every(isRecord) && value.some((row) => Object.keys(row).length > 0);

  const MAX_ROWS = 200;
  const MAX_COLUMNS = 50;
  /** Rows of objects as a table: columns are their keys, in the order first seen. */
  function recordsTable(rows, path, key) {
    const columns = [];
    const seen = new Set();
    for (const row of rows) {
      for (const name of Object.keys(row)) {
        if (!seen.has(name)) {
          seen.add(name);
          columns.push(name);
        }
      }
    }
    const shownColumns = columns.slice(0, MAX_COLUMNS);
    const isNumber = (value) => typeof value === 'number' || isRaw(value);
    const numeric = (name) => rows.every((row) => row[name] == null || isNumber(row[name]));
    const cell = (value) => {
      if (value === undefined) return el('td', { 'data-missing': '' });
      if (value === null) return el('td', { class: 'muted' }, 'null');
      if (typeof value === 'string') return el('td', {}, value);
      if (isNumber(value)) {
        return el('td', { class: 'num' }, isRaw(value) ? value.rawJSON : String(value));
      }
      return el('td', {}, typeof value === 'object' ? JSON.stringify(value) : String(value));
    };
    const table = el('table', { class: 'records', 'data-key': key },
      el('caption', {}, el('code', {}, path),
        ` as a table: ${counted(rows.length, 'row')}, ${counted(columns.length, 'column')}`),
      el('thead', {}, el('tr', {}, ...shownColumns.map((name) =>
        el('th', numeric(name) ? { scope: 'col', class: 'num' } : { scope: 'col' }, name)))),
      el('tbody', {}, ...rows.slice(0, MAX_ROWS).map((row) =>
        el('tr', {}, ...shownColumns.map((name) => cell(row[name]))))));
    const nodes = [el('div', { class: 'table-scroll' }, table)];
    const cut = [];
    if (rows.length > MAX_ROWS) cut.push(`the first ${MAX_ROWS} rows`);
    if (columns.length > MAX_COLUMNS) cut.push(`the first ${MAX_COLUMNS} columns`);
    if (cut.length) {
      nodes.push(el('p', { class: 'muted', 'data-cut': key },
        `The table shows ${cut.join(' and ')}; the JSON above has them all.`));
    }
    return nodes;
  }
  /** Tables for the result when it is a DataFrame, or for each top-level value that is one. */
  function resultTables(result) {
    if (isRecords(result)) return recordsTable(result, 'result', '');
    if (!isRecord(result)) return [];
    return Object.entries(result).filter(([, value]) => isRecords(value))
      .flatMap(([key, value]) => recordsTable(value,
        `result['${key.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}']`, key));
  }

  // Downloads of returned files: Blob URLs, revoked when the next answer replaces them.
  let downloads = [];
  const SKIPPED = {
    symlink: 'a symbolic link (never followed)',
    not_a_regular_file: 'not a regular file (a FIFO, socket or device)',
    changed_while_reading: 'changed while being read',
    unreadable: 'unreadable',
    too_deep: 'deeper than 16 directories',
  };
  const PREVIEW_CHARS = 100000;
  /** What came back of the script's files: a table with downloads, what was left out. */
  function returnedFiles(body) {
    const nodes = [];
    const files = Array.isArray(body.files) ? body.files : [];
    if (Array.isArray(body.files)) {
      nodes.push(el('h4', {}, `Files (${files.length})`));
      if (!files.length) {
        nodes.push(el('p', { class: 'muted', id: 'no-files' }, 'No files came back.'));
      }
    }
    if (files.length) {
      const previews = [];
      const rows = files.map((file) => {
        const path = String(file.path);
        let link;
        try {
          const content = file.encoding === 'base64' ? fromBase64(String(file.content))
            : encoder.encode(String(file.content));
          const blob = new Blob([content], { type: 'application/octet-stream' });
          const url = URL.createObjectURL(blob);
          downloads.push(url);
          link = el('a', { href: url, download: path.split('/').pop(),
            'aria-label': `Download ${path}` }, 'Download');
        } catch (error) {
          link = el('span', { class: 'failed' }, `cannot decode: ${error.message}`);
        }
        if (file.encoding !== 'base64') {
          const text = String(file.content);
          const cut = text.length > PREVIEW_CHARS
            ? ` (the first ${counted(PREVIEW_CHARS, 'character')})` : '';
          previews.push(el('details', { 'data-preview': path },
            el('summary', {}, 'Contents of ', el('code', {}, path), cut),
            el('pre', {}, text.slice(0, PREVIEW_CHARS))));
        }
        return el('tr', { 'data-file': path },
          el('th', { scope: 'row' }, el('code', {}, path)),
          el('td', { class: 'num' }, el('data', { value: String(file.size) },
            bytes(Number(file.size)))),
          el('td', {}, String(file.encoding)),
          el('td', {}, link));
      });
      const heading = (name, attributes) => el('th', { scope: 'col', ...attributes }, name);
      nodes.push(el('div', { class: 'table-scroll' }, el('table', { id: 'returned-files' },
        el('thead', {}, el('tr', {}, heading('Path'), heading('Size', { class: 'num' }),
          heading('Encoding'), heading('File'))),
        el('tbody', {}, ...rows))), ...previews);
    }
    if (body.files_truncated === true) {
      nodes.push(el('p', { class: 'failed', id: 'files-truncated' },
        `Some files were left out: the answer carries at most ${info.limits.output_files} files `
        + `and ${size(info.limits.output_files_bytes)} in all (limits.output_files, `
        + 'limits.output_files_bytes).'));
    }
    if (Array.isArray(body.skipped_files) && body.skipped_files.length) {
      nodes.push(el('h4', {}, `Not sent back (${body.skipped_files.length})`),
        el('ul', { id: 'skipped-files' }, ...body.skipped_files.map((skipped) =>
          el('li', { 'data-skipped': String(skipped.path) }, el('code', {}, String(skipped.path)),
            `: ${SKIPPED[skipped.reason] || String(skipped.reason)}`))));
    }
    return nodes;
  }

  /** "N values were NaN/... and came back as null: paths". */
  function nullsNote(nulls) {
    const count = Number(nulls.count);
    const paths = Array.isArray(nulls.paths) ? nulls.paths.map(String) : [];
    const listed = paths.length < count ? ` (the first ${paths.length})` : '';
    return el('p', { class: 'note', id: 'nulls' },
      `${counted(count, 'value')} ${count === 1 ? 'was' : 'were'} NaN/NaT/NA/±Infinity `
      + `and came back as null${paths.length ? `${listed}: ` : '.'}`,
      ...paths.flatMap((path, index) => [index ? ', ' : '', el('code', {}, path)]));
  }

  function show(response, text) {
    for (const url of downloads) URL.revokeObjectURL(url);
    downloads = [];
    const body = parse(text);
    const nodes = [];
    const isObject = body !== null && typeof body === 'object' && !Array.isArray(body);
    let summary = `${response.status}`;
    if (!isObject) {
      summary += response.statusText ? ` ${response.statusText}` : '';
      nodes.push(el('p', { class: 'failed' }, 'The answer is not a JSON object:'));
    } else if (response.ok) {
      summary += ' OK';
      nodes.push(el('h4', {}, 'Result'), el('pre', { id: 'result' },
        JSON.stringify(body.result, null, 2) ?? 'undefined'));
      if (isRecord(body.nulls)) nodes.push(nullsNote(body.nulls));
      const tables = resultTables(body.result);
      if (tables.length) nodes.push(el('div', { id: 'result-tables' }, ...tables));
      nodes.push(...returnedFiles(body));
      if (isRecord(body.limits)) {
        nodes.push(el('p', { class: 'muted', id: 'applied-limits' }, 'Ran under the limits ',
          ...Object.entries(body.limits).flatMap(([name, value], index) => [index ? ', ' : '',
            el('code', {}, name), ` ${inWords(name, value)}`]), '.'));
      }
      // Whatever else a success carries (fields added after this page was written included).
      const more = Object.fromEntries(Object.entries(body)
        .filter(([name]) => !SHOWN.includes(name) && !OUTPUT.includes(name)));
      if (Object.keys(more).length) {
        const list = describe(more);
        list.id = 'answer-details';
        nodes.push(el('h4', {}, 'Also in the answer'), list);
      }
    } else {
      summary += ` ${body.code}`;
      outcome.dataset.code = String(body.code);
      nodes.push(el('p', {}, 'Error ', el('code', { id: 'error-code' }, String(body.code))),
        el('p', { id: 'error-message' }, String(body.error)));
      const details = Object.fromEntries(Object.entries(body)
        .filter(([name]) => name !== 'error' && name !== 'code' && !OUTPUT.includes(name)));
      if (Object.keys(details).length) {
        const list = describe(details);
        list.id = 'error-details';
        nodes.push(el('h4', {}, 'Details'), list);
      }
    }
    if (isObject) {
      for (const stream of ['stdout', 'stderr']) {
        if (typeof body[stream] !== 'string') continue;
        const cut = body[`${stream}_truncated`] === true
          ? ` (cut at ${size(info.limits.output_bytes)}: the rest was dropped)` : '';
        nodes.push(el('h4', {}, stream + cut), el('pre', { id: stream }, body[stream]));
      }
      if (typeof body.duration_ms === 'number') {
        nodes.push(el('p', { class: 'muted' }, `Ran ${body.duration_ms} ms in the sandbox.`));
      }
    }
    nodes.push(el('details', {}, el('summary', {}, 'The raw answer'),
      el('pre', { id: 'raw' }, text)));
    byId('outcome-status').textContent = summary;
    byId('outcome-status').className = response.ok ? 'ok' : 'failed';
    byId('outcome-body').replaceChildren(...nodes);
    return summary;
  }

  const STREAM = 'application/x-ndjson';

  /**
   * Reads a streamed answer, one event a line: shows stdout and stderr as the script writes
   * them (as text), and returns the last event, `result`, which carries the plain answer.
   */
  async function streamed(response) {
    const live = { stdout: el('pre', { id: 'live-stdout' }), stderr: el('pre', { id: 'live-stderr' }) };
    byId('outcome-status').textContent = 'running';
    byId('outcome-status').className = '';
    byId('outcome-body').replaceChildren(el('h4', {}, 'stdout'), live.stdout,
      el('h4', {}, 'stderr'), live.stderr);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = '';
    let result = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let end;
      while ((end = pending.indexOf('\n')) >= 0) {
        const event = parse(pending.slice(0, end));
        pending = pending.slice(end + 1);
        if (!isRecord(event)) continue;
        if (event.event in live && typeof event.data === 'string') {
          live[event.event].append(event.data);
        } else if (event.event === 'result') {
          result = event;
        }
      }
    }
    if (!isRecord(result)) throw new Error('the stream ended without its result');
    return result;
  }

  let runs = 0;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (run.disabled) return;
    run.disabled = true;
    let request;
    try {
      request = await requestBody();
    } catch (error) {
      request = { problem: String(error) };
    }
    if (request.problem) {
      run.disabled = false;
      status.textContent = `Not sent: ${request.problem}`;
      return;
    }
    outcome.hidden = false;
    outcome.dataset.state = 'running';
    delete outcome.dataset.code;
    status.textContent = 'Running…';
    let summary;
    try {
      // Streamed, so output shows while the script runs; a refusal comes back plain.
      const response = await fetch('/execute', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: `${STREAM}, application/json` },
        body: request.body,
      });
      if ((response.headers.get('Content-Type') || '').startsWith(STREAM)) {
        const result = await streamed(response);
        const code = Number(result.status);
        outcome.dataset.status = String(code);
        summary = show({ status: code, ok: code >= 200 && code < 300, statusText: '' },
          JSON.stringify(result.body));
      } else {
        outcome.dataset.status = String(response.status);
        summary = show(response, await response.text());
      }
    } catch (error) {
      outcome.dataset.status = '0';
      summary = 'no answer';
      byId('outcome-status').textContent = summary;
      byId('outcome-status').className = 'failed';
      byId('outcome-body').replaceChildren(
        el('p', { class: 'failed' }, `The service could not be reached: ${error}`));
    } finally {
      run.disabled = false;
      runs += 1;
      outcome.dataset.runs = String(runs);
      outcome.dataset.state = 'done';
    }
    status.textContent = `Done: ${summary}.`;
  });
})();
