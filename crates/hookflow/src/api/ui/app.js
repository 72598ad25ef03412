// hookflow dashboard: a small read-mostly view of the API, with the key the user pastes.
// Every value from the API reaches the page as text (textContent, text nodes, attribute
// values), never as markup. Deployment secrets are never read or shown.
'use strict';

(function () {
  const KEY_ITEM = 'hookflow.apiKey';
  const RESPONDER_ITEM = 'hookflow.responder';
  const PAGE_SIZE = 25;
  const DELIVERY_PAGE = 100;
  const REFRESH_MS = 3000;
  const RUN_STATUSES = ['queued', 'running', 'waiting', 'completed', 'failed', 'cancelled'];
  const APPROVAL_STATUSES = ['pending', 'approved', 'rejected', 'timed_out', 'cancelled'];
  const TERMINAL = ['completed', 'failed', 'cancelled'];
  // The API lives beside /ui/, so a proxy that serves hookflow under a prefix keeps working.
  const API_BASE = new URL('../', document.baseURI);

  // ------------------------------------------------------------------------------------------
  // The key, kept in this browser only.

  const keyStore = {
    get() {
      return sessionStorage.getItem(KEY_ITEM) || localStorage.getItem(KEY_ITEM) || '';
    },
    set(key, remember) {
      keyStore.forget();
      (remember ? localStorage : sessionStorage).setItem(KEY_ITEM, key);
    },
    forget() {
      sessionStorage.removeItem(KEY_ITEM);
      localStorage.removeItem(KEY_ITEM);
    },
  };

  // ------------------------------------------------------------------------------------------
  // DOM helpers: elements are built with createElement, data goes in as text.

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (typeof value === 'function') node.addEventListener(name.replace(/^on/, ''), value);
      else if (name === 'class') node.className = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  /** A link inside the dashboard (`#/…`); `path` is built by the caller with enc(). */
  function link(path, text, cls) {
    return h('a', { href: '#/' + path, class: cls }, text);
  }

  function dash() {
    return h('span', { class: 'muted' }, '—');
  }

  function show(value) {
    return value === null || value === undefined || value === '' ? dash() : String(value);
  }

  function badge(status) {
    const word = String(status);
    return h('span', { class: /^[a-z_]+$/.test(word) ? 'badge ' + word : 'badge' }, word);
  }

  function when(ts) {
    if (!ts) return dash();
    const date = new Date(ts);
    return h('time', { datetime: ts, title: ts }, isNaN(date) ? ts : date.toLocaleString());
  }

  function span(from, to) {
    const ms = Date.parse(to) - Date.parse(from);
    if (!from || !to || !(ms >= 0)) return dash();
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    return Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
  }

  function json(value) {
    return h('pre', {}, JSON.stringify(value === undefined ? null : value, null, 2));
  }

  /** A collapsed block; `key` keeps it open across auto-refreshes. */
  function fold(key, summary, body, open) {
    return h('details', { 'data-key': key, open: open }, h('summary', {}, summary), body);
  }

  function table(headers, rows, empty) {
    if (!rows.length) return h('p', { class: 'notice muted' }, empty);
    return h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, headers.map((name) => h('th', {}, name)))),
      h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((cell) => h('td', {}, cell)))))));
  }

  function facts(pairs) {
    return h('dl', { class: 'facts' },
      pairs.filter(Boolean).map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]));
  }

  function errorBox(error) {
    const code = error.code ? ' (' + error.code + ')' : '';
    return h('div', { class: 'error', role: 'alert' }, String(error.message) + code);
  }

  // ------------------------------------------------------------------------------------------
  // The API.

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the API: `path` is an OpenAPI path template, `params` fill its `{names}`. */
  async function request(method, path, params, query, body) {
    const filled = path.replace(/\{(\w+)\}/g, (_, name) => enc(params[name]));
    const url = new URL(filled.slice(1), API_BASE);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== null && value !== undefined && value !== '') url.searchParams.set(name, value);
    }
    const init = {
      method,
      headers: { Authorization: 'Bearer ' + keyStore.get() },
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, 'network_error', 'Cannot reach hookflow: ' + e.message);
    }
    const raw = await response.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch (_) {
      data = null;
    }
    if (response.ok) return data;
    const error = new ApiError(response.status,
      (data && data.error_code) || 'http_' + response.status,
      (data && data.error) || response.statusText || 'Request failed');
    if (response.status === 401) {
      keyStore.forget();
      showLogin('The key was refused (' + error.message + '). Paste a valid API key.');
    }
    throw error;
  }

  // ------------------------------------------------------------------------------------------
  // Navigation: `#/section/id?query`.

  let generation = 0;
  let refreshTimer = null;
  let flash = null;

  function here() {
    const raw = location.hash.replace(/^#\/?/, '');
    const at = raw.indexOf('?');
    return {
      path: at < 0 ? raw : raw.slice(0, at),
      query: new URLSearchParams(at < 0 ? '' : raw.slice(at + 1)),
    };
  }

  function hashOf(path, query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) if (value) params.set(name, value);
    const text = params.toString();
    return '#/' + path + (text ? '?' + text : '');
  }

  function go(path, query) {
    const target = hashOf(path, query);
    if (location.hash === target) render();
    else location.hash = target;
  }

  /** Shows `text` above the next view. */
  function notify(kind, text) {
    flash = { kind, text };
  }

  /** Re-renders a view in a while, unless the user is typing in it. */
  function refreshLater() {
    const mine = generation;
    refreshTimer = setTimeout(() => {
      if (mine !== generation) return;
      const typing = [...$('view').querySelectorAll('input, textarea')]
        .some((input) => input.value || input === document.activeElement);
      if (typing || document.visibilityState !== 'visible') refreshLater();
      else render();
    }, REFRESH_MS);
  }

  const ROUTES = [
    [/^runs$/, 'runs', viewRuns],
    [/^runs\/([^/]+)$/, 'runs', viewRun],
    [/^approvals$/, 'approvals', viewApprovals],
    [/^workflows$/, 'workflows', viewWorkflows],
    [/^workflows\/([^/]+)$/, 'workflows', viewWorkflow],
    [/^deployments$/, 'deployments', viewDeployments],
    [/^deployments\/([^/]+)$/, 'deployments', viewDeployment],
  ];

  async function render() {
    clearTimeout(refreshTimer);
    const mine = ++generation;
    if (!keyStore.get()) {
      showLogin();
      return;
    }
    showApp();
    const { path, query } = here();
    const found = ROUTES.map(([pattern, section, view]) => [path.match(pattern), section, view])
      .find(([match]) => match);
    if (!found) {
      location.replace('#/runs');
      return;
    }
    const [match, section, view] = found;
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.section === section);
    }
    let node;
    try {
      node = await view({ params: match.slice(1).map(decodeURIComponent), query });
    } catch (error) {
      node = errorBox(error);
    }
    if (mine !== generation) return;
    const target = $('view');
    const open = new Set([...target.querySelectorAll('details[open][data-key]')]
      .map((d) => d.dataset.key));
    const message = flash && h('p', { class: flash.kind, role: 'status' }, flash.text);
    flash = null;
    target.replaceChildren(...[message, node].filter(Boolean));
    for (const d of target.querySelectorAll('details[data-key]')) {
      if (open.has(d.dataset.key)) d.open = true;
    }
  }

  /** Runs an action of a button: disables it meanwhile, reports the outcome, re-renders. */
  async function act(button, action, success) {
    button.disabled = true;
    try {
      await action();
      notify('notice', success);
    } catch (error) {
      if (error.status === 401) return;
      notify('error', error.message + (error.code ? ' (' + error.code + ')' : ''));
    }
    render();
  }

  function refreshButton() {
    return h('button', { type: 'button', class: 'quiet', onclick: () => render() }, 'Refresh');
  }

  function pager(path, query, next) {
    const base = Object.fromEntries(query);
    delete base.cursor;
    return h('div', { class: 'pager' },
      query.get('cursor') ? h('a', { href: hashOf(path, base) }, '« First page') : null,
      next ? h('a', { href: hashOf(path, { ...base, cursor: next }) }, 'Next page »') : null);
  }

  /** `limit` and `cursor` of a list view's API call. */
  function paging(query) {
    return { limit: PAGE_SIZE, cursor: query.get('cursor') };
  }

  /** A list view: its title and filters, the table of one page, and links to page on. */
  function listing({ title, section, query, page, filters, headers, row, empty }) {
    return h('div', {},
      h('h1', {}, title),
      h('div', { class: 'toolbar' }, filters, h('span', { class: 'spacer' }), refreshButton()),
      table(headers, page.data.map(row), empty),
      pager(section, query, page.next_cursor));
  }

  function select(name, values, current, anyLabel) {
    return h('select', { name, 'aria-label': name },
      h('option', { value: '' }, anyLabel),
      values.map((v) => h('option', { value: v, selected: v === current }, v)));
  }

  // ------------------------------------------------------------------------------------------
  // Runs.

  async function viewRuns({ query }) {
    const filters = {
      status: query.get('status') || '',
      deployment: query.get('deployment') || '',
      user: query.get('user') || '',
    };
    const page = await request('GET', '/v1/workflow/runs', {},
      { ...filters, ...paging(query) });
    const status = select('status', RUN_STATUSES, filters.status, 'any status');
    const deployment = h('input', {
      name: 'deployment', placeholder: 'deployment (name or id)', value: filters.deployment,
    });
    const user = h('input', { name: 'user', placeholder: 'user', value: filters.user });
    const form = h('form', {
      class: 'actions',
      onsubmit: (event) => {
        event.preventDefault();
        go('runs', {
          status: status.value, deployment: deployment.value.trim(), user: user.value.trim(),
        });
      },
    }, status, deployment, user, h('button', { type: 'submit' }, 'Filter'));
    const row = (run) => [
      link('runs/' + enc(run.request_id), run.request_id, 'mono'),
      badge(run.run_status),
      [link('deployments/' + enc(run.deployment_id), run.deployment),
        run.variant === 'default' ? '' : ' · ' + run.variant],
      link('workflows/' + enc(run.workflow), run.workflow + ' v' + run.version),
      run.source + ' · ' + run.delivery,
      show(run.user),
      when(run.created_at),
      span(run.started_at || run.created_at, run.finished_at),
    ];
    return listing({
      title: 'Runs', section: 'runs', query, page, filters: form, row, empty: 'No runs match.',
      headers: ['Run', 'Status', 'Deployment', 'Workflow', 'Source · delivery', 'User',
        'Created', 'Took'],
    });
  }

  async function viewRun({ params: [id] }) {
    const [run, deliveries] = await Promise.all([
      request('GET', '/v1/workflow/runs/{id}', { id }),
      request('GET', '/v1/workflow/runs/{id}/deliveries', { id }, { limit: DELIVERY_PAGE }),
    ]);
    const terminal = TERMINAL.includes(run.run_status);
    if (!terminal) refreshLater();
    const callback = run.async && run.async.callback_url;
    return h('div', {},
      h('div', { class: 'toolbar' },
        h('h1', { class: 'mono' }, 'Run ' + run.request_id), badge(run.run_status),
        h('span', { class: 'spacer' }),
        terminal ? null : h('span', { class: 'hint' }, 'refreshing while the run is active'),
        refreshButton()),
      terminal ? null : cancelPanel(run),
      h('section', { class: 'panel' }, facts([
        ['Deployment', [link('deployments/' + enc(run.deployment_id), run.deployment),
          ' · variant ' + run.variant]],
        ['Workflow', link('workflows/' + enc(run.workflow), run.workflow + ' v' + run.version)],
        ['Source', run.source],
        ['Delivery', run.delivery],
        callback ? ['Callback URL', h('span', { class: 'mono' }, callback)] : null,
        ['User', show(run.user)],
        ['Created', when(run.created_at)],
        ['Started', when(run.started_at)],
        ['Finished', when(run.finished_at)],
        ['Took', span(run.started_at || run.created_at, run.finished_at)],
      ])),
      h('div', { class: 'grid2' },
        h('div', {}, h('h2', {}, 'Inputs'), json(run.inputs)),
        h('div', {}, 'error' in run
          ? [h('h2', {}, 'Error'), h('pre', { class: 'error' }, run.error)]
          : [h('h2', {}, 'Output'), 'output' in run ? json(run.output)
            : h('p', { class: 'muted' }, 'Not finished yet.')]),
        h('div', {}, h('h2', {}, 'Metadata'), json(run.metadata)),
        h('div', {}, h('h2', {}, 'Variant settings'), json(run.settings))),
      h('h2', {}, 'Step executions'),
      table(['Step', 'Attempt', 'Status', 'Started', 'Finished', 'Took', 'Result'],
        run.steps.map((step) => [
          h('span', { class: 'mono' }, step.step_id),
          String(step.attempt),
          badge(step.status),
          when(step.started_at),
          when(step.finished_at),
          span(step.started_at, step.finished_at),
          step.error !== null && step.error !== undefined
            ? h('pre', { class: 'error' }, step.error)
            : fold(run.request_id + '/' + step.step_id + '/' + step.attempt, 'output',
              json(step.output)),
        ]), 'No step has started yet.'),
      deliveriesSection(run, terminal, deliveries));
  }

  function cancelPanel(run) {
    const reason = h('input', { placeholder: 'reason (optional)', 'aria-label': 'reason' });
    const button = h('button', {
      type: 'button',
      class: 'danger',
      onclick: () => {
        if (!window.confirm('Cancel run ' + run.request_id + '?')) return;
        const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
        act(button, () => request('POST', '/v1/workflow/runs/{id}/cancel',
          { id: run.request_id }, {}, body), 'Run cancelled.');
      },
    }, 'Cancel run');
    return h('section', { class: 'panel actions' }, reason, button);
  }

  function deliveriesSection(run, terminal, deliveries) {
    const url = h('input', {
      type: 'url',
      placeholder: run.delivery === 'callback' ? 'another URL (optional)' : 'callback URL',
      'aria-label': 'callback URL',
    });
    const send = h('button', {
      type: 'button',
      onclick: () => {
        const body = url.value.trim() ? { callback_url: url.value.trim() } : {};
        act(send, () => request('POST', '/v1/workflow/runs/{id}/deliveries/retry',
          { id: run.request_id }, {}, body), 'Terminal event sent again; see the newest attempt.');
      },
    }, 'Send terminal event again');
    const rows = deliveries.data.map((a, i) => [
      String(a.attempt),
      a.trigger,
      a.status_code === null
        ? badge('none')
        : h('span', { class: 'badge ' + (a.status_code < 300 ? 'ok' : 'bad') }, String(a.status_code)),
      h('span', { class: 'mono' }, a.url),
      a.duration_ms === null ? dash() : a.duration_ms + ' ms',
      a.error ? h('span', { class: 'error' }, a.error) : dash(),
      when(a.created_at),
      when(a.next_attempt_at),
      a.response_body ? fold(run.request_id + '/delivery/' + i + '/' + a.created_at, 'body',
        h('pre', {}, a.response_body)) : dash(),
    ]);
    return [
      h('h2', {}, 'Callback deliveries'),
      terminal
        ? h('section', { class: 'panel actions' }, url, send,
          h('span', { class: 'hint' }, run.delivery === 'callback'
            ? 'Replays the signed terminal event now, also after retries ran out.'
            : 'A sync run has no callback: give a URL to send its terminal event to.'))
        : null,
      table(['Attempt', 'Trigger', 'Status', 'URL', 'Took', 'Error', 'At', 'Next attempt',
        'Response'], rows, run.delivery === 'callback'
        ? 'No delivery attempt yet.' : 'No deliveries: this run answered synchronously.'),
      deliveries.next_cursor
        ? h('p', { class: 'hint' }, 'Only the newest ' + DELIVERY_PAGE + ' attempts are shown.')
        : null,
    ];
  }

  // ------------------------------------------------------------------------------------------
  // Approvals.

  async function viewApprovals({ query }) {
    // Pending by default; `any` lists every status.
    const chosen = query.has('status') ? query.get('status') : 'pending';
    const status = chosen === 'any' ? '' : chosen;
    const page = await request('GET', '/v1/workflow/approvals', {},
      { status, ...paging(query) });
    const filter = select('status', APPROVAL_STATUSES, status, 'any status');
    filter.addEventListener('change', () => go('approvals', { status: filter.value || 'any' }));
    const row = (a) => [
      [show(a.prompt), h('span', { class: 'sub mono' }, a.id)],
      [link('runs/' + enc(a.request_id), a.request_id, 'mono'),
        h('span', { class: 'sub' }, 'step ' + a.step_id)],
      show(a.assignee),
      badge(a.status),
      [when(a.created_at), a.deadline ? h('span', { class: 'sub' }, 'until ', when(a.deadline)) : null],
      a.status === 'pending' ? answerForm(a) : answered(a),
    ];
    return listing({
      title: 'Approvals', section: 'approvals', query, page, filters: filter, row,
      headers: ['Prompt', 'Run', 'Assignee', 'Status', 'Opened', 'Answer'],
      empty: 'No approvals match.',
    });
  }

  function answered(a) {
    if (!a.decision && !a.responder && !a.comment) return dash();
    return h('span', {}, show(a.decision), a.responder ? ' by ' + a.responder : '',
      a.comment ? ': ' + a.comment : '', a.answered_at ? [' · ', when(a.answered_at)] : '');
  }

  function answerForm(approval) {
    const comment = h('input', { placeholder: 'comment', 'aria-label': 'comment' });
    const responder = h('input', {
      placeholder: 'your name', 'aria-label': 'responder',
      value: localStorage.getItem(RESPONDER_ITEM) || '',
    });
    const answer = (decision) => (event) => {
      const body = { decision };
      if (comment.value.trim()) body.comment = comment.value.trim();
      if (responder.value.trim()) {
        body.responder = responder.value.trim();
        localStorage.setItem(RESPONDER_ITEM, body.responder);
      }
      act(event.target, () => request('POST', '/v1/workflow/approvals/{id}',
        { id: approval.id }, {}, body), 'Answered ' + approval.id + ': ' + decision + '.');
    };
    return h('div', { class: 'actions' }, comment, responder,
      h('button', { type: 'button', onclick: answer('approve') }, 'Approve'),
      h('button', { type: 'button', class: 'danger', onclick: answer('reject') }, 'Reject'));
  }

  // ------------------------------------------------------------------------------------------
  // Workflows and deployments.

  async function viewWorkflows({ query }) {
    const page = await request('GET', '/v1/workflows', {}, paging(query));
    return listing({
      title: 'Workflows', section: 'workflows', query, page,
      headers: ['Name', 'Latest version', 'Description', 'Updated'],
      row: (w) => [
        link('workflows/' + enc(w.name), w.name),
        String(w.latest_version),
        show(w.description),
        when(w.updated_at),
      ],
      empty: 'No workflows yet: save one with `hookflow workflows create`.',
    });
  }

  async function viewWorkflow({ params: [name] }) {
    const workflow = await request('GET', '/v1/workflows/{name}', { name });
    const versions = [...workflow.versions].sort((a, b) => b.version - a.version);
    return h('div', {},
      h('h1', {}, 'Workflow ' + workflow.name),
      versions.map((v, i) => h('section', { class: 'panel' },
        fold(workflow.name + '/v' + v.version,
          ['Version ' + v.version + ' · ', when(v.created_at)], json(v.definition), i === 0))));
  }

  function variantSummary(variants) {
    return Object.entries(variants || {})
      .map(([name, v]) => name + ' → v' + v.version).join(', ');
  }

  async function viewDeployments({ query }) {
    const page = await request('GET', '/v1/deployments', {}, paging(query));
    return listing({
      title: 'Deployments', section: 'deployments', query, page,
      headers: ['Name', 'Id', 'Workflow', 'Variants', 'Concurrency limit', 'Updated'],
      row: (d) => [
        link('deployments/' + enc(d.id), d.name),
        h('span', { class: 'mono' }, d.id),
        link('workflows/' + enc(d.workflow), d.workflow),
        variantSummary(d.variants),
        show(d.concurrency_limit),
        when(d.updated_at),
      ],
      empty: 'No deployments yet: create one with `hookflow deployments create`.',
    });
  }

  async function viewDeployment({ params: [id] }) {
    const d = await request('GET', '/v1/deployments/{id}', { id });
    return h('div', {},
      h('div', { class: 'toolbar' }, h('h1', {}, 'Deployment ' + d.name),
        h('span', { class: 'spacer' }), link('runs?deployment=' + enc(d.id), 'Runs of this deployment')),
      h('section', { class: 'panel' }, facts([
        ['Id', h('span', { class: 'mono' }, d.id)],
        ['Workflow', link('workflows/' + enc(d.workflow), d.workflow)],
        ['Concurrency limit', show(d.concurrency_limit)],
        ['Created', when(d.created_at)],
        ['Updated', when(d.updated_at)],
        d.previous_secret_expires_at
          ? ['Previous signing key valid until', when(d.previous_secret_expires_at)] : null,
      ]), h('p', { class: 'hint' },
        'The deployment secret is never shown here; the API answers it on creation and rotation.')),
      h('h2', {}, 'Variants'),
      table(['Variant', 'Version', 'Settings'], Object.entries(d.variants || {}).map(([name, v]) => [
        name,
        link('workflows/' + enc(d.workflow), 'v' + v.version),
        json(v.settings),
      ]), 'No variants.'));
  }

  // ------------------------------------------------------------------------------------------
  // Sign in and out.

  function showLogin(message) {
    clearTimeout(refreshTimer);
    generation++;
    $('nav').hidden = true;
    $('forget').hidden = true;
    $('view').replaceChildren();
    $('login').hidden = false;
    $('login-error').hidden = !message;
    $('login-error').textContent = message || '';
    $('login-key').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('nav').hidden = false;
    $('forget').hidden = false;
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $('login-key').value.trim();
    if (!key) return;
    keyStore.set(key, $('login-remember').checked);
    try {
      await request('GET', '/v1/workflows', {}, { limit: 1 });
    } catch (error) {
      if (error.status !== 401) {
        keyStore.forget();
        showLogin(error.message);
      }
      return;
    }
    $('login-key').value = '';
    render();
  }

  $('login-form').addEventListener('submit', signIn);
  $('forget').addEventListener('click', () => {
    keyStore.forget();
    showLogin();
  });
  window.addEventListener('hashchange', render);
  render();
})();
