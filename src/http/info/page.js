
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
  script.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

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

  function show(response, text) {
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
      // Whatever else a success carries (fields added after this page was written included).
      const more = Object.fromEntries(Object.entries(body)
        .filter(([name]) => name !== 'result' && !OUTPUT.includes(name)));
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

  let runs = 0;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (run.disabled) return;
    run.disabled = true;
    outcome.hidden = false;
    outcome.dataset.state = 'running';
    delete outcome.dataset.code;
    status.textContent = 'Running…';
    let summary;
    try {
      const response = await fetch('/execute', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ script: script.value }),
      });
      outcome.dataset.status = String(response.status);
      summary = show(response, await response.text());
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
