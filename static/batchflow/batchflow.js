/*
 * batchflow.js: live progress for batchflow jobs. Plain ES2017, no dependencies, no build step.
 *
 *   batchflow.progress(jobIdOrUrls, {container, onUpdate, onComplete, prefix}) -> {element, promise, stop(), status}
 *   batchflow.start(handlerName, {params, ids, redirect_url}, progressOptions) -> Promise<handle>
 *   batchflow.init(scope)   runs on DOMContentLoaded: [data-batchflow-job] views, [data-batchflow-jobs] lists
 *   [data-batchflow-start] buttons start a job on click (one delegated listener).
 *
 * Server strings are only ever inserted with textContent: this file never parses HTML.
 * Updates come over Server-Sent Events; on any SSE error the view polls the status URL instead,
 * backing off on errors but never giving up, and stops only at a terminal status.
 */
(function () {
  'use strict';

  const DEFAULT_LABELS = {
    title: 'Job', pending: 'Waiting to start', running: 'Running', paused: 'Paused',
    stopping: 'Stopping…', canceling: 'Canceling…', completed: 'Completed',
    completed_with_failures: 'Completed with failures', failed: 'Failed', stalled: 'Stalled',
    stopped: 'Stopped', canceled: 'Canceled', good: 'done', bad: 'failed', skipped: 'skipped',
    stop: 'Stop', cancel: 'Cancel', pause: 'Pause', resume: 'Resume', retry: 'Retry failed'
  };
  // Badges name the state in a word or two; the labels (often sentences) make the status line.
  const BADGES = {
    pending: 'Waiting', running: 'Running', paused: 'Paused', stopping: 'Stopping', canceling: 'Canceling',
    completed: 'Completed', completed_with_failures: 'Completed with failures', failed: 'Failed',
    stalled: 'Stalled', stopped: 'Stopped', canceled: 'Canceled'
  };
  const TOOLTIPS = {
    stop: 'Stop after the current step. Work already done is kept.',
    cancel: 'Stop and undo every change this job has made.',
    pause: 'Pause after the current step. You can resume later.',
    resume: 'Continue where the job left off.',
    retry: 'Start a new job for the items that failed.'
  };
  const HINTS = { stop: 'Stop keeps the work done so far.', cancel: 'Cancel undoes everything done so far.' };
  const RESTARTED = 'This job was restarted after its worker was lost; its counts started again.';
  const POLL_MS = 1000;          // polling interval while SSE is unavailable
  const ROW_MS = 2000;           // jobs list: polling interval of each live row
  const MAX_BACKOFF_MS = 10000;  // errors back off up to this, then keep trying forever
  const SAFETY_POLL_MS = 15000;  // on SSE: an occasional poll too, in case a proxy buffers the stream
  const SSE_RETRY_MS = 30000;    // after falling back to polling, try SSE again this much later
  const MAX_SSE = 3;             // browsers allow ~6 connections per host: leave room for polls and actions
  let sseOpen = 0;
  let uid = 0;

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs, kids) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach((k) => {
      const v = attrs[k];
      if (v == null || v === false) return;
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    });
    (kids || []).forEach((kid) => { if (kid != null) node.append(kid); });  // strings become text nodes
    return node;
  }
  const part = (root, name) => root.querySelector('[data-bf="' + name + '"]');
  function setText(node, text) {
    text = text == null ? '' : String(text);
    if (node && node.textContent !== text) node.textContent = text;
  }
  function show(node, on) { if (node) node.hidden = !on; }
  function fill(node, kids) { node.replaceChildren.apply(node, kids.filter((k) => k != null)); }
  function meta(name) { const m = document.querySelector('meta[name="' + name + '"]'); return m ? m.content : null; }
  function csrfToken() {
    const input = document.querySelector('input[name="csrf_token"]');
    return meta('csrf-token') || (input ? input.value : '');
  }
  const jobPrefix = (prefix) => (prefix || meta('batchflow-prefix') || '/jobs').replace(/\/+$/, '');
  // Only http(s) URLs become links, and only same-site ones for redirects.
  function safeUrl(url, sameSite) {
    if (!url) return null;
    try {
      const u = new URL(url, location.href);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
      return sameSite && u.origin !== location.origin ? null : url;
    } catch (e) { return null; }
  }
  const withQuery = (url, q) => url + (url.indexOf('?') < 0 ? '?' : '&') + q;
  const cap = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1) : '');
  function emit(node, name, detail) { node.dispatchEvent(new CustomEvent(name, { detail, bubbles: true })); }
  function call(fn, arg) {
    if (typeof fn !== 'function') return;
    try { fn(arg); } catch (e) { console.error('batchflow: callback failed', e); }
  }

  const numbers = new Intl.NumberFormat(document.documentElement.lang || undefined);
  const fmt = (n) => numbers.format(n || 0);
  const dateTimes = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  const clockTimes = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const isoTime = (ts) => new Date(ts * 1000).toISOString();

  function fmtDuration(s) {
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60);
    const h = Math.floor(m / 60);
    if (s < 60) return s + ' s';
    if (h) return h + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
    return m + ' min' + (s % 60 ? ' ' + (s % 60) + ' s' : '');
  }
  function fmtEta(s) {
    if (s == null || !isFinite(s) || s < 0) return '';
    if (s < 10) return 'a few seconds left';
    if (s < 60) return 'about ' + Math.ceil(s / 10) * 10 + ' s left';
    return 'about ' + fmtDuration(Math.round(s / 60) * 60) + ' left';
  }
  function fmtRate(r) {
    if (r == null || !isFinite(r) || r <= 0) return '';
    const digits = r >= 10 ? 0 : r >= 1 ? 1 : 2;
    return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(r) + ' per second';
  }
  const elapsed = (s) => (s.started_at ? fmtDuration((s.finished_at || Date.now() / 1000) - s.started_at) : '');

  async function requestJSON(method, url, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRFToken'] = csrfToken();
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(url, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    return { ok: res.ok, status: res.status, data };
  }
  const errorText = (r, what) => (r.data && r.data.error) || what + ' failed (HTTP ' + r.status + ').';

  // ---------------------------------------------------------------- status -> what to show

  function labelsOf(s) {
    const out = Object.assign({}, DEFAULT_LABELS);
    Object.keys(s.labels || {}).forEach((k) => { if (s.labels[k]) out[k] = s.labels[k]; });
    return out;
  }
  const stateOf = (s) => (s.terminal ? s.outcome || s.status : s.status);

  // The bar as {value, max} (value null = indeterminate), percent (0-100 or null) and a phase text.
  function meter(s, state) {
    const processed = s.processed || 0;
    if (s.status === 'canceling') {  // the bar shows the undo: how much of the done work is reversed
      const done = (s.undone || 0) + (s.undo_failed || 0);
      const of = s.good || 0;
      return { value: of ? Math.min(done, of) : null, max: of, percent: of ? (done / of) * 100 : null,
        phase: 'Undoing… ' + fmt(done) + ' of ' + fmt(of) };
    }
    if (s.total != null) {
      const max = Math.max(s.total, 1);
      const phase = fmt(processed) + ' of ' + fmt(s.total) + ' processed';
      if (state === 'completed') return { value: max, max, percent: 100, phase };
      const value = Math.min(processed, s.total);
      return { value, max, percent: s.percent != null ? s.percent : (value / max) * 100, phase };
    }
    if (s.terminal) return { value: 1, max: 1, percent: null, phase: fmt(processed) + ' processed' };
    const idle = s.status === 'pending' ? 'Waiting for a worker…' : 'Working…';
    return { value: null, max: null, percent: null, phase: processed ? fmt(processed) + ' processed' : idle };
  }
  const percentText = (p) => (p == null ? '' : Math.floor(Math.max(0, Math.min(100, p))) + '%');

  function applyBar(bar, pctNode, m) {
    if (!bar) return;
    if (m.value == null) bar.removeAttribute('value');
    else { bar.max = m.max; bar.value = m.value; }
    bar.setAttribute('aria-valuetext', m.phase + (m.percent == null ? '' : ' (' + percentText(m.percent) + ')'));
    setText(bar, percentText(m.percent));
    setText(pctNode, percentText(m.percent));
  }
  function renderBadge(node, state) {
    if (!node) return;
    node.className = 'bf-badge bf-badge--' + state;
    setText(node, BADGES[state] || state);
  }
  function setStateClass(node, prefix, state) {
    const previous = node.getAttribute('data-status');
    if (previous) node.classList.remove(prefix + previous);
    node.classList.add(prefix + state);
    node.setAttribute('data-status', state);
  }
  const sentence = (t) => (/[.!?…]$/.test(t) ? t : t + '.');
  // What the outcome box says under its label: the counts, and what became of the work.
  // Item and one-shot jobs count good and bad; other jobs only count units processed.
  const tallied = (s) => s.kind === 'items' || s.kind === 'task' || (s.good || 0) + (s.bad || 0) > 0;
  function outcomeText(s, L, state) {
    const counts = tallied(s)
      ? fmt(s.good) + ' ' + L.good + (s.bad ? ', ' + fmt(s.bad) + ' ' + L.bad : '')
      : fmt(s.processed) + ' processed';
    switch (state) {
      case 'completed': case 'completed_with_failures': return counts + '.';
      case 'failed': case 'stalled': return s.processed ? 'Before it ended: ' + counts + '.' : 'Nothing was processed.';
      case 'stopped': return 'Kept: ' + counts + '.';
      case 'canceled': return 'Undone: ' + fmt(s.undone) + (s.undo_failed ? ', ' + fmt(s.undo_failed) + ' could not be undone' : '') + '.';
      default: return '';
    }
  }
  function resultsTable(results) {
    const rows = Object.keys(results).map((k) => {
      const v = results[k];
      return el('tr', {}, [el('th', { scope: 'row', text: k }),
        el('td', { text: v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v) })]);
    });
    return el('table', { class: 'bf-kv' }, [el('caption', { text: 'Results' }), el('tbody', {}, rows)]);
  }

  // Builds the view's parts, unless the server rendered them already (progress.html does).
  function buildView(root, level) {
    root.classList.add('bf-job');
    if (part(root, 'bar')) return;
    const id = 'bf-' + ++uid;
    const stat = (k) => el('div', { class: 'bf-stat bf-stat--' + k, 'data-bf': k + '-box' },
      [el('dt', { 'data-bf': k + '-label' }), el('dd', { 'data-bf': k, text: '0' })]);
    const p = (cls, name, extra) => el('p', Object.assign({ class: cls, 'data-bf': name, hidden: true }, extra));
    root.append(
      el('header', { class: 'bf-job__head' }, [
        el('h' + level, { class: 'bf-job__title', id: id + '-title', 'data-bf': 'title' }),
        el('span', { class: 'bf-badge', 'data-bf': 'badge' })]),
      el('p', { class: 'bf-job__status', 'data-bf': 'status' }, [el('span', { class: 'bf-job__state', 'data-bf': 'state' }),
        el('span', { class: 'bf-job__message', 'data-bf': 'message', hidden: true })]),
      p('bf-notice bf-notice--info', 'restarted', { text: RESTARTED }),
      el('div', { class: 'bf-meter' }, [
        el('div', { class: 'bf-meter__row' }, [
          el('span', { class: 'bf-meter__phase', 'data-bf': 'phase' }),
          el('span', { class: 'bf-meter__percent', 'data-bf': 'percent' })]),
        el('progress', { class: 'bf-progress', 'data-bf': 'bar', 'aria-labelledby': id + '-title' }),
        el('div', { class: 'bf-meter__row bf-meter__sub' }, [
          el('span', { 'data-bf': 'rate' }), el('span', { 'data-bf': 'eta' })])]),
      el('p', { class: 'bf-sr-only', 'data-bf': 'live', 'aria-live': 'polite', 'aria-atomic': 'true' }),
      el('dl', { class: 'bf-stats' }, [stat('good'), stat('bad'), stat('skipped')]),
      el('div', { class: 'bf-outcome', 'data-bf': 'outcome', tabindex: '-1', hidden: true }),
      p('bf-notice bf-notice--error', 'notice', { role: 'alert' }),
      p('bf-conn', 'conn', { role: 'status' }),
      el('div', { class: 'bf-actions', 'data-bf': 'actions' }),
      el('div', { class: 'bf-extras', 'data-bf': 'extras' }),
      el('section', { class: 'bf-log', 'data-bf': 'log', hidden: true, 'aria-labelledby': id + '-log' }, [
        el('h' + Math.min(level + 1, 6), { class: 'bf-log__title', id: id + '-log', text: 'Activity' }),
        el('ol', { class: 'bf-log__list', 'data-bf': 'messages' })]));
  }

  // ---------------------------------------------------------------- transport

  // Hands status objects to hooks.status: SSE first, polling as the fallback. Never gives up on errors.
  class Feed {
    constructor(urls, hooks, interval) {
      interval = interval || POLL_MS;
      Object.assign(this, { urls, hooks, interval, delay: interval, sseFailures: 0, pollingSince: 0 });
    }
    start(wait) { if (this.canSse()) this.openSse(); else this.schedule(wait || 0); }
    canSse() { return !!(this.urls.events_url && window.EventSource && sseOpen < MAX_SSE && this.sseFailures < 3); }
    openSse() {
      const es = new EventSource(this.urls.events_url);
      let received = false;
      this.es = es;
      sseOpen++;
      es.onmessage = (e) => {
        let s;
        try { s = JSON.parse(e.data); } catch (err) { return; }
        received = true;
        this.hooks.connection(true);
        this.hooks.status(s);
      };
      es.onerror = () => {  // a 500, a dropped stream and the end of the stream all land here
        this.closeSse();
        if (this.stopped) return;
        if (!received) this.sseFailures++;
        this.pollingSince = Date.now();
        this.schedule(0);
      };
      this.schedule(SAFETY_POLL_MS);
    }
    closeSse() {
      if (this.es) { this.es.close(); this.es = null; sseOpen--; }
    }
    schedule(ms) {
      clearTimeout(this.timer);
      if (!this.stopped) this.timer = setTimeout(() => this.poll(), ms);
    }
    async poll() {
      let r = null;
      try { r = await requestJSON('GET', this.urls.status_url); } catch (e) { r = null; }  // network error
      if (this.stopped) return;
      if (r && r.ok && r.data) {
        this.delay = this.interval;
        this.hooks.connection(true);
        this.hooks.status(r.data);
        if (this.stopped) return;
        if (this.es) this.schedule(SAFETY_POLL_MS);
        else if (Date.now() - this.pollingSince > SSE_RETRY_MS && this.canSse()) this.openSse();
        else this.schedule(this.interval);
      } else if (r && (r.status === 404 || r.status === 410)) {
        this.hooks.gone();
      } else if (this.es) {
        this.schedule(SAFETY_POLL_MS);  // SSE is still up; this poll was only the safety net
      } else {
        this.hooks.connection(false);
        this.schedule(this.delay);
        this.delay = Math.min(this.delay * 2, MAX_BACKOFF_MS);
      }
    }
    stop() { this.stopped = true; this.closeSse(); clearTimeout(this.timer); }
  }

  // ---------------------------------------------------------------- the live view of one job

  class JobView {
    constructor(root, urls, options) {
      Object.assign(this, { root, urls, options, status: null, keys: {} });
      buildView(root, options.level || 2);
      this.promise = new Promise((resolve) => { this.resolve = resolve; });
      root.addEventListener('click', (e) => this.onClick(e));
      this.onPageHide = () => this.cleanup();
      // Only leaving the page cleans up: a user who merely switched tabs can still download.
      window.addEventListener('pagehide', this.onPageHide);
      const view = this;
      this.handle = { element: root, promise: this.promise, stop: () => this.stop(), get status() { return view.status; } };
      if (urls.initial) this.update(urls.initial, true);
      if (this.done) return;
      this.feed = new Feed(urls, {
        status: (s) => this.update(s), connection: (ok) => this.connection(ok), gone: () => this.gone()
      });
      this.feed.start();
    }

    update(s, initial) {
      if (!s || typeof s.status !== 'string' || this.done || this.stopped) return;
      const cur = this.status;  // SSE, polls and action answers may cross: never go back in time
      if (cur && s.updated_at != null && cur.updated_at != null && s.updated_at < cur.updated_at) return;
      this.status = s;
      this.render(s);
      emit(this.root, 'batchflow:update', s);
      call(this.options.onUpdate, s);
      if (s.terminal) this.finish(s, initial);
    }

    render(s) {
      const L = labelsOf(s);
      const state = stateOf(s);
      const root = this.root;
      const m = meter(s, state);
      const running = s.status === 'running';
      setStateClass(root, 'bf-job--', state);
      setText(part(root, 'title'), L.title !== DEFAULT_LABELS.title ? L.title : s.handler || L.title);
      renderBadge(part(root, 'badge'), state);
      setText(part(root, 'state'), s.terminal ? '' : L[state]);  // when over, the outcome box says it
      setText(part(root, 'message'), s.message);
      show(part(root, 'message'), !!s.message);
      show(part(root, 'status'), !!(s.message || !s.terminal));
      show(part(root, 'restarted'), !!s.restarted);
      applyBar(part(root, 'bar'), part(root, 'percent'), m);
      setText(part(root, 'phase'), m.phase);
      setText(part(root, 'rate'), s.terminal ? (s.finished_at && s.started_at ? 'Took ' + elapsed(s) : '') : running ? fmtRate(s.rate) : '');
      setText(part(root, 'eta'), running ? fmtEta(s.eta_s) : '');
      ['good', 'bad', 'skipped'].forEach((k) => {
        setText(part(root, k), fmt(s[k]));
        setText(part(root, k + '-label'), cap(L[k]));
      });
      show(part(root, 'skipped-box'), (s.skipped || 0) > 0);
      show(part(root, 'good-box'), tallied(s));
      show(part(root, 'bad-box'), tallied(s));
      const badBox = part(root, 'bad-box');
      if (badBox) badBox.classList.toggle('bf-stat--nonzero', (s.bad || 0) > 0);
      if (this.options.documentTitle) {  // the tab shows the progress while the user is elsewhere
        const title = part(root, 'title').textContent;
        document.title = (!s.terminal && m.percent != null ? percentText(m.percent) : BADGES[state] || state) + ' · ' + title;
      }
      this.announce(s, L, state, m);
      this.renderOutcome(s, L, state);
      this.renderActions(s, L);
      this.renderExtras(s);
      this.renderLog(s);
    }

    // The live region speaks on state changes and every 10 %, not on every event.
    announce(s, L, state, m) {
      const key = state + ':' + (m.percent == null ? '' : Math.floor(m.percent / 10));
      if (key === this.keys.live) return;
      this.keys.live = key;
      setText(part(this.root, 'live'), sentence(L[state]) + ' ' + (s.terminal ? outcomeText(s, L, state)
        : m.phase + (m.percent == null ? '' : ', ' + percentText(m.percent))));
    }

    renderOutcome(s, L, state) {
      const box = part(this.root, 'outcome');
      const key = s.terminal ? JSON.stringify([state, s.good, s.bad, s.undone, s.undo_failed, s.error]) : '';
      if (!box || key === this.keys.outcome) return;
      this.keys.outcome = key;
      show(box, s.terminal);
      box.className = 'bf-outcome bf-outcome--' + state;
      fill(box, !s.terminal ? [] : [
        el('p', { class: 'bf-outcome__title', text: L[state] || state }),
        el('p', { class: 'bf-outcome__text', text: outcomeText(s, L, state) }),
        s.error ? el('p', { class: 'bf-outcome__error', 'data-bf': 'error', text: s.error }) : null]);
    }

    // Buttons are rebuilt only when the set of actions changes, so hover and focus survive updates.
    renderActions(s, L) {
      const box = part(this.root, 'actions');
      const urls = s.action_urls || {};
      const acts = (s.actions || []).filter((a) => TOOLTIPS[a] && urls[a]);  // "retry" comes after the end
      if (this.confirming && acts.indexOf('cancel') < 0) this.confirming = false;
      const key = acts.join(',') + '|' + !!this.confirming;
      if (!box || key === this.keys.actions) return;
      this.keys.actions = key;
      const focused = box.contains(document.activeElement) && document.activeElement.getAttribute('data-bf-action');
      const button = (action, cls, text, attrs) => el('button', Object.assign({ type: 'button',
        class: 'bf-button ' + cls, 'data-bf-action': action, 'aria-disabled': this.busy ? 'true' : null }, attrs), [text]);
      if (this.confirming) {
        const id = 'bf-' + ++uid + '-confirm';
        fill(box, [el('div', { class: 'bf-confirm', role: 'group', 'aria-labelledby': id }, [
          el('p', { id, class: 'bf-confirm__text',
            text: 'Cancel this job and undo everything it has done so far (' + fmt(s.good) + ' ' + L.good + ')?' }),
          el('div', { class: 'bf-actions__row' }, [
            button('confirm-cancel', 'bf-button--danger', 'Yes, cancel and undo'),
            button('keep', '', "Don't cancel")])])]);
        box.querySelector('[data-bf-action="keep"]').focus();
        return;
      }
      const hintId = 'bf-' + ++uid + '-hint';
      const hint = acts.filter((a) => HINTS[a]).map((a) => HINTS[a]).join(' ');
      const buttons = acts.map((a) => button(a, 'bf-button--' + a, L[a],
        { title: TOOLTIPS[a], 'aria-describedby': hint ? hintId : null }));
      fill(box, [buttons.length ? el('div', { class: 'bf-actions__row' }, buttons) : null,
        hint ? el('p', { class: 'bf-hint', id: hintId, text: hint }) : null]);
      if (focused) {  // keep the keyboard user in the action bar, or move them to the outcome
        const again = box.querySelector('[data-bf-action="' + focused + '"]') || box.querySelector('button');
        (again || part(this.root, 'outcome')).focus();
      }
    }

    renderExtras(s) {
      const box = part(this.root, 'extras');
      const hasResults = !!s.results && typeof s.results === 'object' && Object.keys(s.results).length > 0;
      const key = JSON.stringify([s.download_url, s.file_name, hasResults && s.results, s.results_url,
        s.bad > 0, s.terminal, s.redirect_url, !!this.cleanedUp, !!this.redirecting]);
      if (!box || key === this.keys.extras) return;
      this.keys.extras = key;
      const download = safeUrl(s.download_url);
      const report = safeUrl(s.results_url);
      const back = s.terminal && safeUrl(s.redirect_url, true);
      const links = back ? [el('a', { class: 'bf-button', href: back, 'data-bf': 'back' }, ['Back'])] : [];
      if (report && (s.bad > 0 || hasResults)) {
        links.push(el('a', { class: 'bf-link', href: withQuery(report, 'format=csv'), 'data-bf': 'report' },
          [s.bad > 0 ? 'Download the error report (CSV)' : 'Download the results (CSV)']));
      }
      if (back && this.redirecting) {
        links.push(el('span', { class: 'bf-subtle', text: 'Going back in a moment…' }),
          el('button', { type: 'button', class: 'bf-linkbutton', 'data-bf-action': 'stay' }, ['Stay here']));
      }
      fill(box, [
        download && this.cleanedUp ? el('p', { class: 'bf-subtle', text: 'Downloaded. The file was removed from the server.' }) : null,
        download && !this.cleanedUp ? el('a', { class: 'bf-button bf-button--primary bf-download', href: download,
          download: s.file_name || '', 'data-bf-download': '' }, ['Download ' + (s.file_name || 'the file')]) : null,
        hasResults ? resultsTable(s.results) : null,
        links.length ? el('div', { class: 'bf-links' }, links) : null]);
    }

    renderLog(s) {
      const log = part(this.root, 'log');
      const msgs = (s.messages || []).slice(-8).reverse();
      const key = JSON.stringify(msgs);
      if (!log || key === this.keys.log) return;
      this.keys.log = key;
      show(log, msgs.length > 1);  // a single message is already on show as the status message
      fill(part(this.root, 'messages'), msgs.map((m) => el('li', { class: 'bf-log__item' }, [
        m.at ? el('time', { class: 'bf-log__time', datetime: isoTime(m.at), text: clockTimes.format(m.at * 1000) }) : null,
        el('span', { class: 'bf-log__text', text: m.text })])));
    }

    onClick(e) {
      if (e.target.closest('[data-bf-download]')) { this.downloaded = true; return; }
      const btn = e.target.closest('[data-bf-action]');
      if (!btn || !this.status || btn.getAttribute('aria-disabled') === 'true') return;
      const action = btn.getAttribute('data-bf-action');
      if (action === 'cancel' || action === 'keep') {  // Cancel undoes work: ask first
        this.confirming = action === 'cancel';
        this.renderActions(this.status, labelsOf(this.status));
        const cancel = part(this.root, 'actions').querySelector('[data-bf-action="cancel"]');
        if (cancel) cancel.focus();
      } else if (action === 'confirm-cancel') {
        this.confirming = false;
        this.act('cancel');
      } else if (action === 'stay') {
        clearTimeout(this.redirectTimer);
        this.redirecting = false;
        this.renderExtras(this.status);
      } else {
        this.act(action);
      }
    }

    async act(name) {
      const url = (this.status.action_urls || {})[name];
      if (!url || this.busy) return;
      this.setBusy(true);
      this.notice(null);
      let r = null;
      try { r = await requestJSON('POST', url); } catch (e) { r = null; }
      this.setBusy(false);
      if (!r) this.notice('Network error: the request did not reach the server. Please try again.');
      else if (!r.ok) this.notice(errorText(r, cap(name)));
      else if (r.data && typeof r.data.status === 'string') this.update(r.data);
      else if (r.data && r.data.url) this.openJob(r.data);  // "retry" answers with a new job
      if (this.status) this.renderActions(this.status, labelsOf(this.status));
    }

    // Goes to a job this one led to, unless a listener of "batchflow:started" handles it itself.
    openJob(data) {
      const url = safeUrl(data.url, true);
      const event = new CustomEvent('batchflow:started', { detail: data, bubbles: true, cancelable: true });
      if (this.root.dispatchEvent(event) && url) location.assign(url);
    }

    // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
    setBusy(on) {
      this.busy = on;
      this.root.querySelectorAll('[data-bf="actions"] button').forEach((b) => {
        if (on) b.setAttribute('aria-disabled', 'true'); else b.removeAttribute('aria-disabled');
      });
    }
    notice(text) {
      setText(part(this.root, 'notice'), text);
      show(part(this.root, 'notice'), !!text);
    }
    connection(ok) {
      if (ok === this.online) return;
      this.online = ok;
      setText(part(this.root, 'conn'), ok ? '' : 'Connection problem. Retrying…');
      show(part(this.root, 'conn'), !ok);
    }
    gone() {
      this.notice('This job no longer exists, or you no longer have access to it.');
      this.finish(this.status, true);
    }

    finish(s, initial) {
      this.done = true;
      if (this.feed) this.feed.stop();
      this.connection(true);
      this.resolve(s);
      if (!s) return;
      emit(this.root, 'batchflow:complete', s);
      call(this.options.onComplete, s);
      // Only a completion seen live goes back by itself, so a reload or the back button never loops.
      const back = safeUrl(s.redirect_url, true);
      if (!initial && back && stateOf(s) === 'completed' && !s.download_url && this.options.autoRedirect !== false) {
        this.redirecting = true;
        this.renderExtras(s);
        this.redirectTimer = setTimeout(() => location.assign(back), this.options.redirectDelay || 2000);
      }
    }

    // After a download, leaving the page (or hiding it) tells the server it may delete the file.
    cleanup() {
      const s = this.status;
      const url = s && s.action_urls && s.action_urls.cleanup;
      if (!this.downloaded || this.cleanedUp || !url) return;
      this.cleanedUp = true;
      const data = new FormData();  // a beacon cannot carry headers: the token travels as a form field
      data.append('csrf_token', csrfToken());
      if (!(navigator.sendBeacon && navigator.sendBeacon(url, data))) {
        fetch(url, { method: 'POST', body: data, keepalive: true, credentials: 'same-origin' }).catch(() => {});
      }
      this.renderExtras(s);
    }

    stop() {
      if (this.stopped) return;
      this.stopped = true;
      if (this.feed) this.feed.stop();
      clearTimeout(this.redirectTimer);
      this.cleanup();
      window.removeEventListener('pagehide', this.onPageHide);
      this.resolve(this.status);
    }
  }

  // ---------------------------------------------------------------- public API

  function resolveUrls(target, prefix) {
    if (typeof target === 'string' && target) {
      const base = jobPrefix(prefix) + '/' + encodeURIComponent(target);
      return { id: target, url: base, status_url: base + '/status', events_url: base + '/events', initial: null };
    }
    const t = target || {};
    if (!t.status_url) {
      if (t.id) return resolveUrls(String(t.id), prefix);
      throw new TypeError('batchflow.progress needs a job id or an object with status_url');
    }
    const isStatus = typeof t.status === 'string' && 'processed' in t;  // a whole status: paint it at once
    return { id: t.id, url: t.url, status_url: t.status_url, events_url: t.events_url || null, initial: isStatus ? t : null };
  }

  function openDialog(urls) {
    const root = el('section', { class: 'bf-job bf-job--dialog' });
    const close = el('button', { type: 'button', class: 'bf-dialog__close', 'aria-label': 'Close',
      title: 'Close (the job keeps running)' }, ['×']);
    const dialog = el('dialog', { class: 'bf-dialog' }, [el('div', { class: 'bf-dialog__inner' }, [close, root])]);
    document.body.appendChild(dialog);
    close.addEventListener('click', () => dialog.close());
    dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); });  // the backdrop
    if (dialog.showModal) dialog.showModal(); else dialog.setAttribute('open', '');
    return { dialog, root };
  }

  function progress(target, options) {
    options = Object.assign({}, options);
    const urls = resolveUrls(target, options.prefix);
    let root = options.container;
    if (root && !root.matches('[data-batchflow-job], .bf-job')) root = root.appendChild(el('section', { class: 'bf-job' }));
    const modal = root ? null : openDialog(urls);
    const view = new JobView(root || modal.root, urls, options);
    if (modal) {  // closing the dialog stops watching; the job itself keeps running
      const page = safeUrl(urls.url, true);
      modal.root.append(el('p', { class: 'bf-dialog__foot' }, ['The job keeps running if you close this window. ',
        page ? el('a', { class: 'bf-link', href: page }, ['Open the job page']) : null]));
      modal.dialog.setAttribute('aria-labelledby', part(modal.root, 'title').id);
      modal.dialog.addEventListener('close', () => { view.stop(); modal.dialog.remove(); });
      view.handle.stop = () => { view.stop(); if (modal.dialog.open) modal.dialog.close(); };
      view.handle.dialog = modal.dialog;
    }
    return view.handle;
  }

  async function requestStart(handler, body, prefix) {
    const payload = {};
    ['params', 'ids', 'redirect_url'].forEach((k) => { if (body && body[k] != null) payload[k] = body[k]; });
    let r;
    try {
      r = await requestJSON('POST', jobPrefix(prefix) + '/start/' + encodeURIComponent(handler), payload);
    } catch (e) { throw new Error('Network error: the job could not be started.'); }
    if (!r.ok || !r.data || !(r.data.status_url || r.data.id)) throw new Error(errorText(r, 'Starting the job'));
    return r.data;
  }

  async function start(handler, body, options) {
    options = options || {};
    return progress(await requestStart(handler, body, options.prefix), options);
  }

  function parseData(node, name) {
    const raw = node.getAttribute(name);
    if (raw == null || raw === '') return undefined;
    try { return JSON.parse(raw); } catch (e) { throw new Error('Invalid JSON in ' + name + '.'); }
  }

  async function onStartClick(btn) {
    if (btn.getAttribute('aria-busy') === 'true') return;
    let error = btn.nextElementSibling;
    if (!error || !error.classList.contains('bf-start-error')) {
      error = el('span', { class: 'bf-start-error', role: 'alert', id: 'bf-' + ++uid + '-error', hidden: true });
      btn.after(error);
      btn.setAttribute('aria-describedby', error.id);
    }
    show(error, false);
    btn.setAttribute('aria-busy', 'true');
    try {
      const prefix = btn.getAttribute('data-batchflow-prefix') || undefined;
      const data = await requestStart(btn.getAttribute('data-batchflow-start'), {
        params: parseData(btn, 'data-batchflow-params'), ids: parseData(btn, 'data-batchflow-ids'),
        redirect_url: btn.getAttribute('data-batchflow-redirect') || undefined
      }, prefix);
      emit(btn, 'batchflow:started', data);
      if (btn.hasAttribute('data-batchflow-modal')) progress(data, { prefix });
      else location.assign(safeUrl(data.url, true) || resolveUrls(data.id, prefix).url);
    } catch (e) {
      setText(error, e.message);
      show(error, true);
    } finally {
      btn.removeAttribute('aria-busy');
    }
  }

  // Jobs list: each row of a job still under way polls its status URL until the job is over.
  function renderRow(row, s) {
    const L = labelsOf(s);
    const state = stateOf(s);
    setStateClass(row, 'bf-row--', state);
    row.setAttribute('data-terminal', String(!!s.terminal));
    renderBadge(part(row, 'badge'), state);
    applyBar(part(row, 'bar'), part(row, 'percent'), meter(s, state));
    setText(part(row, 'good'), fmt(s.good));
    setText(part(row, 'bad'), fmt(s.bad));
    setText(part(row, 'duration'), elapsed(s) || '—');
    const started = part(row, 'started');
    if (started && s.started_at && !started.querySelector('time')) {
      fill(started, [el('time', { datetime: isoTime(s.started_at), text: dateTimes.format(s.started_at * 1000) })]);
    }
  }
  function init(scope) {
    scope = scope || document;
    scope.querySelectorAll('[data-bf-time]').forEach((t) => {
      const ts = parseFloat(t.getAttribute('data-bf-time'));
      if (ts) { t.textContent = dateTimes.format(ts * 1000); t.title = isoTime(ts); }
    });
    scope.querySelectorAll('[data-batchflow-job]').forEach((node) => {
      if (node.batchflow) return;
      const script = node.querySelector('script[type="application/json"]');
      let initial = null;
      try { initial = script ? JSON.parse(script.textContent) : null; } catch (e) { initial = null; }
      const urls = Object.assign({}, initial, {
        id: node.getAttribute('data-batchflow-job'),
        status_url: node.getAttribute('data-status-url') || (initial && initial.status_url),
        events_url: node.getAttribute('data-events-url') || (initial && initial.events_url)
      });
      node.batchflow = progress(urls.status_url ? urls : urls.id, {
        container: node, level: parseInt(node.getAttribute('data-batchflow-level'), 10) || 2,
        documentTitle: document.querySelectorAll('[data-batchflow-job]').length === 1
      });
    });
    scope.querySelectorAll('[data-batchflow-jobs]').forEach((list) => {
      if (list.batchflowLive) return;
      list.batchflowLive = true;
      list.querySelectorAll('[data-batchflow-row]').forEach((row, i) => {
        const url = row.getAttribute('data-status-url');
        if (!url || row.getAttribute('data-terminal') === 'true') return;
        const feed = new Feed({ status_url: url }, {  // polling only: SSE for every row would use up connections
          status: (s) => {
            if (typeof s.status !== 'string') return;
            renderRow(row, s);
            emit(row, 'batchflow:update', s);
            if (s.terminal || !row.isConnected) feed.stop();
          },
          connection: () => {}, gone: () => feed.stop()
        }, ROW_MS);
        feed.start(300 + i * 120);
      });
    });
  }

  document.addEventListener('click', (e) => {
    const btn = e.target.closest && e.target.closest('[data-batchflow-start]');
    if (!btn) return;
    e.preventDefault();
    onStartClick(btn);
  });
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', () => init());
  else init();

  window.batchflow = { progress, start, init, version: '0.1.0' };
})();
