/*
 * batchflow.js: live progress for batchflow jobs. Plain ES2017, no dependencies, no build step.
 *
 *   batchflow.progress(jobIdOrUrls, {container, onUpdate, onComplete, prefix}) -> {element, promise, stop(), status}
 *   batchflow.start(handlerName, {params, ids, redirect_url}, progressOptions) -> Promise<handle>
 *   batchflow.configure({pollMs, ...}) -> the settings now (see SETTINGS; also read at load from
 *       window.batchflowConfig and from this script tag's data-batchflow-config JSON)
 *   batchflow.init(scope)   runs on DOMContentLoaded: [data-batchflow-job] views, [data-batchflow-jobs] lists
 *   [data-batchflow-start] buttons start a job on click (one delegated listener).
 *
 * This file has no words of its own: every text it shows comes ready-made from the server, in the
 * status JSON's `text` object (or an error answer's `error`), and the bar from its `bar` object.
 * On a server-rendered page it only sets the text and attributes of the elements the template
 * rendered (found by their data-bf names); for a modal or an empty container it first builds the
 * same elements, empty. Server strings are only ever inserted with textContent: this file never
 * parses HTML. Updates come over Server-Sent Events; on any SSE error the view polls the status
 * URL instead, backing off on errors but never giving up, and stops only at a terminal status.
 * The server ends each stream after a while and refuses one (429) beyond a person's cap: a stream
 * that worked and ended is followed by one poll and a new stream; one that fails before its first
 * event (a refusal looks the same to EventSource) means polling, and SSE again sseRetryMs later.
 * A page that only loads this script works too: the routes' prefix and batchflow.css come from the
 * script's own URL, a CSRF token from <prefix>/csrf-token when the page carries none.
 *
 * Notifications: on any page that loads it, this script polls <prefix>/notifications (every
 * notifyPollMs while the page is visible, and when it becomes visible again) and shows a toast
 * for each ending of the person's jobs they have not seen (once per browser); dismissing one, or
 * following its link, marks it seen. Elements with data-batchflow-unseen show how many are
 * unseen (hidden at 0 with data-hide-zero). A job's view marks its own ending seen and, if the
 * person asked with its "Notify me when done" button, shows a browser notification when the job
 * ends while the tab is in the background.
 */
(function () {
  'use strict';

  // Timings, overridable with batchflow.configure() (tests use small values).
  const SETTINGS = {
    pollMs: 1000,            // polling interval while SSE is unavailable
    rowPollMs: 2000,         // jobs list: polling interval of each live row
    rowDelayMs: 300,         // jobs list: the first row's first poll, then rowStaggerMs more per row
    rowStaggerMs: 120,
    maxBackoffMs: 10000,     // errors back off up to this, then keep trying forever
    safetyPollMs: 15000,     // on SSE: an occasional poll too, in case a proxy buffers the stream
    pendingPollMs: 10000,    // while a job waits for a worker: poll this often, even on SSE (its words change)
    sseRetryMs: 30000,       // after falling back to polling, try SSE again this much later
    sseFailures: 3,          // streams in a row that fail before their first event, then poll for good
    maxSse: 3,               // browsers allow ~6 connections per host: leave room for polls and actions
    redirectDelayMs: 2000,   // a completion seen live goes back to redirect_url after this
    notifyPollMs: 15000      // any page: look for the person's unseen job endings this often (0: never)
  };
  function configure(options) {
    Object.keys(options || {}).forEach((k) => {
      if (!(k in SETTINGS)) throw new TypeError('batchflow.configure: unknown setting ' + k);
      const v = Number(options[k]);
      if (!(v >= 0)) throw new TypeError('batchflow.configure: ' + k + ' must be a number >= 0');
      SETTINGS[k] = v;
    });
    return Object.assign({}, SETTINGS);
  }
  const own = document.currentScript || document.querySelector('script[src*="batchflow.js"]');
  if (window.batchflowConfig) configure(window.batchflowConfig);
  if (own && own.getAttribute('data-batchflow-config')) configure(JSON.parse(own.getAttribute('data-batchflow-config')));

  // The fixed words of the last status seen (status.text.ui), for messages that may come before a
  // view has a status of its own (a connection problem, a failed start).
  let ui = {};
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
  function setAttr(node, name, value) {
    if (!node) return;
    if (value == null || value === false) node.removeAttribute(name);
    else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
  }
  function show(node, on) { if (node) node.hidden = !on; }
  function fill(node, kids) { node.replaceChildren.apply(node, kids.filter((k) => k != null)); }
  function meta(name) { const m = document.querySelector('meta[name="' + name + '"]'); return m ? m.content : null; }

  // Where this script came from: the blueprint serves it at <prefix>/static/batchflow/batchflow.js,
  // so a page that only loads it (no meta tags) still finds the routes and the stylesheet. (An
  // empty prefix would be the app's own /static, not the blueprint's.)
  const ownSrc = own && own.src ? new URL(own.src) : null;
  const srcPrefix = ownSrc && ownSrc.origin === location.origin && /^(.*\S)\/static\/batchflow\/batchflow(\.min)?\.js$/.exec(ownSrc.pathname);
  const jobPrefix = (prefix) => (prefix || meta('batchflow-prefix') || (srcPrefix && srcPrefix[1]) || '/jobs').replace(/\/+$/, '');
  // The stylesheet beside this script, unless the page has it (or data-batchflow-css="none").
  function addStyles() {
    if (!ownSrc || own.getAttribute('data-batchflow-css') === 'none' || document.querySelector('link[href*="batchflow.css"]')) return;
    document.head.append(el('link', { rel: 'stylesheet', href: new URL('batchflow.css', ownSrc).href }));
  }

  // The CSRF token: the page's (a meta tag, a form's field), else one fetched from the blueprint
  // (a same-origin JSON answer that another site's page cannot read).
  let fetchedToken = null;
  function csrfToken() {
    const input = document.querySelector('input[name="csrf_token"]');
    return meta('csrf-token') || (input ? input.value : '') || fetchedToken || '';
  }
  let tokenRequest = null;
  async function csrfTokenFor(prefix) {
    if (csrfToken()) return csrfToken();
    tokenRequest = tokenRequest || fetch(jobPrefix(prefix) + '/csrf-token', {
      headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store'
    }).then((r) => (r.ok ? r.json() : null)).then((d) => { fetchedToken = (d && d.csrf_token) || ''; return fetchedToken; })
      .finally(() => { tokenRequest = null; });
    return tokenRequest;
  }
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
  function emit(node, name, detail) { node.dispatchEvent(new CustomEvent(name, { detail, bubbles: true })); }
  function call(fn, arg) {
    if (typeof fn !== 'function') return;
    try { fn(arg); } catch (e) { console.error('batchflow: callback failed', e); }
  }
  // The words of a status (empty ones for a status from a server without them).
  function textOf(s) {
    const t = (s && s.text) || {};
    if (t.ui) ui = t.ui;
    return t;
  }
  const stateOf = (s) => s.state || (s.terminal ? s.outcome || s.status : s.status);

  // A <time datetime> shown in the reader's own time zone; the server wrote it in UTC.
  const localFormats = {
    datetime: new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }),
    clock: new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
  };
  function localise(node) {
    const format = localFormats[node.getAttribute('data-bf-local')];
    const when = new Date(node.getAttribute('datetime'));
    if (!format || isNaN(when)) return;
    if (!node.title) node.title = node.textContent;  // the server's UTC text stays on hover
    node.textContent = format.format(when);
  }

  async function requestJSON(method, url, body, prefix) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRFToken'] = await csrfTokenFor(prefix);
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(url, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    return { ok: res.ok, status: res.status, data };
  }
  // The server's own message for a refused request, else its generic one with the HTTP code.
  const errorText = (r) => (r.data && r.data.error) || (ui.refused || 'HTTP {code}').replace('{code}', r.status);

  // ---------------------------------------------------------------- status -> page

  function applyBar(bar, pctNode, s, t) {
    const b = s.bar || {};
    if (bar) {
      if (b.value == null) bar.removeAttribute('value');
      else { bar.max = b.max; bar.value = b.value; }
      setAttr(bar, 'aria-valuetext', t.bar);
      setText(bar, t.percent);
    }
    setText(pctNode, t.percent);
  }
  function renderBadge(node, state, t) {
    if (!node) return;
    node.className = 'bf-badge bf-badge--' + state;
    setText(node, t.badge);
  }
  function setStateClass(node, prefix, state) {
    const previous = node.getAttribute('data-status');
    if (previous) node.classList.remove(prefix + previous);
    node.classList.add(prefix + state);
    node.setAttribute('data-status', state);
  }

  // The elements progress.html renders, built empty for a view that has no server markup (a modal,
  // an empty container). Their words arrive with the first status.
  function buildView(root, level) {
    root.classList.add('bf-job');
    if (part(root, 'bar')) return;
    const id = 'bf-' + ++uid;
    const stat = (k) => el('div', { class: 'bf-stat bf-stat--' + k, 'data-bf': k + '-box', hidden: true },
      [el('dt', { 'data-bf': k + '-label' }), el('dd', { 'data-bf': k })]);
    const p = (cls, name, extra) => el('p', Object.assign({ class: cls, 'data-bf': name, hidden: true }, extra));
    root.append(
      el('header', { class: 'bf-job__head' }, [
        el('h' + level, { class: 'bf-job__title', id: id + '-title', 'data-bf': 'title' }),
        el('span', { class: 'bf-badge', 'data-bf': 'badge' })]),
      el('p', { class: 'bf-job__status', 'data-bf': 'status' }, [el('span', { class: 'bf-job__state', 'data-bf': 'state' }),
        el('span', { class: 'bf-job__message', 'data-bf': 'message', hidden: true })]),
      p('bf-notice bf-notice--info', 'restarted'),
      el('div', { class: 'bf-preview', 'data-bf': 'preview', hidden: true }, [
        el('p', { class: 'bf-preview__summary', 'data-bf': 'preview-summary' }),
        p('bf-preview__rejected', 'preview-rejected'),
        el('div', { class: 'bf-preview__lists' }, ['sample', 'errors'].map((k) =>
          el('div', { 'data-bf': 'preview-' + k + '-box', hidden: true }, [
            el('p', { class: 'bf-preview__caption' }),
            el('ul', { class: 'bf-preview__list' + (k === 'errors' ? ' bf-preview__list--errors' : ''), 'data-bf': 'preview-' + k })])))]),
      el('div', { class: 'bf-meter' }, [
        el('div', { class: 'bf-meter__row' }, [
          el('span', { class: 'bf-meter__phase', 'data-bf': 'phase' }),
          el('span', { class: 'bf-meter__percent', 'data-bf': 'percent' })]),
        el('progress', { class: 'bf-progress', 'data-bf': 'bar', 'aria-labelledby': id + '-title' }),
        el('div', { class: 'bf-meter__row bf-meter__sub' }, [
          el('span', { 'data-bf': 'rate' }), el('span', { 'data-bf': 'eta' })])]),
      el('p', { class: 'bf-sr-only', 'data-bf': 'live', 'aria-live': 'polite', 'aria-atomic': 'true' }),
      el('dl', { class: 'bf-stats' }, [stat('good'), stat('bad'), stat('skipped')]),
      el('div', { class: 'bf-outcome', 'data-bf': 'outcome', tabindex: '-1', hidden: true }, [
        el('p', { class: 'bf-outcome__title', 'data-bf': 'outcome-title' }),
        el('p', { class: 'bf-outcome__text', 'data-bf': 'outcome-text' }),
        el('p', { class: 'bf-outcome__error', 'data-bf': 'error', hidden: true })]),
      p('bf-notice bf-notice--error', 'notice', { role: 'alert' }),
      p('bf-conn', 'conn', { role: 'status' }),
      el('div', { class: 'bf-actions', 'data-bf': 'actions' }),
      el('div', { class: 'bf-extras', 'data-bf': 'extras', hidden: true }, [
        el('a', { class: 'bf-button bf-button--primary bf-download', 'data-bf': 'download', 'data-bf-download': true, hidden: true }),
        p('bf-subtle', 'downloaded'),
        el('table', { class: 'bf-kv', 'data-bf': 'results', hidden: true }, [
          el('caption', { 'data-bf': 'results-caption' }), el('tbody', { 'data-bf': 'results-rows' })]),
        el('div', { class: 'bf-links', 'data-bf': 'links', hidden: true })]),
      el('section', { class: 'bf-log', 'data-bf': 'log', hidden: true, 'aria-labelledby': id + '-log' }, [
        el('h' + Math.min(level + 1, 6), { class: 'bf-log__title', id: id + '-log', 'data-bf': 'log-title' }),
        el('ol', { class: 'bf-log__list', 'data-bf': 'messages' })]));
  }

  // ---------------------------------------------------------------- transport

  // Hands status objects to hooks.status: SSE first, polling as the fallback. Never gives up on errors.
  class Feed {
    constructor(urls, hooks, interval) {
      Object.assign(this, { urls, hooks, interval, sseFailures: 0, pollingSince: 0 });
      this.delay = this.every();
    }
    every() { return this.interval || SETTINGS.pollMs; }
    start(wait) { if (this.canSse()) this.openSse(); else this.schedule(wait || 0); }
    canSse() {
      return !!(this.urls.events_url && window.EventSource && sseOpen < SETTINGS.maxSse && this.sseFailures < SETTINGS.sseFailures);
    }
    openSse() {
      const es = new EventSource(this.urls.events_url);
      const opened = Date.now();
      let received = false;
      this.es = es;
      sseOpen++;
      es.onmessage = (e) => {
        let s;
        try { s = JSON.parse(e.data); } catch (err) { return; }
        received = true;
        this.hooks.connection(true);
        this.hooks.status(s);
        this.notePending(s);
      };
      // A refusal (429: too many streams open), a 500, a dropped stream and the end of the stream
      // (the server ends each after a while) all land here, and EventSource cannot tell them apart.
      es.onerror = () => {
        this.closeSse();
        if (this.stopped) return;
        if (received && Date.now() - opened >= SETTINGS.pollMs) {
          // It worked, then ended: poll once for what the gap missed, then open a new stream.
          this.sseFailures = 0;
          this.pollingSince = 0;
        } else {
          // Failed before its first event (or at once): poll, and try SSE again sseRetryMs later.
          if (!received) this.sseFailures++;
          this.pollingSince = Date.now();
        }
        this.schedule(0);
      };
      this.schedule(this.safety());
    }
    // On SSE, the safety poll; more often while the job waits for a worker, since the server's
    // words for a long wait change with time alone (no commit, so no event says so).
    safety() { return this.pending ? Math.min(SETTINGS.pendingPollMs, SETTINGS.safetyPollMs) : SETTINGS.safetyPollMs; }
    notePending(s) {
      const was = this.pending;
      this.pending = !!s && s.status === 'pending';
      if (this.pending && !was && this.es) this.schedule(this.safety());
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
        this.delay = this.every();
        this.hooks.connection(true);
        this.hooks.status(r.data);
        if (this.stopped) return;
        this.pending = r.data.status === 'pending';
        if (this.es) this.schedule(this.safety());
        else if (Date.now() - this.pollingSince > SETTINGS.sseRetryMs && this.canSse()) this.openSse();
        else this.schedule(this.every());
      } else if (r && (r.status === 404 || r.status === 410)) {
        this.hooks.gone(r);
      } else if (this.es) {
        this.schedule(this.safety());  // SSE is still up; this poll was only the safety net
      } else {
        this.hooks.connection(false);
        this.schedule(this.delay);
        this.delay = Math.min(this.delay * 2, SETTINGS.maxBackoffMs);
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
      this.offerNotify();
      this.feed = new Feed(urls, {
        status: (s) => this.update(s), connection: (ok) => this.connection(ok), gone: (r) => this.gone(r)
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
      const t = textOf(s);
      const counts = t.counts || {};
      const countLabels = t.count_labels || {};
      const state = stateOf(s);
      const root = this.root;
      setStateClass(root, 'bf-job--', state);
      setText(part(root, 'title'), t.title);
      renderBadge(part(root, 'badge'), state, t);
      setText(part(root, 'state'), t.status);
      setText(part(root, 'message'), s.message);
      show(part(root, 'message'), !!s.message);
      show(part(root, 'status'), !!(s.message || t.status));
      setText(part(root, 'restarted'), (t.ui || {}).restarted);
      show(part(root, 'restarted'), !!s.restarted);
      applyBar(part(root, 'bar'), part(root, 'percent'), s, t);
      setText(part(root, 'phase'), t.phase);
      setText(part(root, 'rate'), t.speed);
      setText(part(root, 'eta'), t.eta);
      ['good', 'bad', 'skipped'].forEach((k) => {
        setText(part(root, k), counts[k]);
        setText(part(root, k + '-label'), countLabels[k]);
      });
      show(part(root, 'skipped-box'), (s.skipped || 0) > 0);
      show(part(root, 'good-box'), !!s.tallied);  // jobs that count good and bad, not just units
      show(part(root, 'bad-box'), !!s.tallied);
      const badBox = part(root, 'bad-box');
      if (badBox) badBox.classList.toggle('bf-stat--nonzero', (s.bad || 0) > 0);
      if (this.options.documentTitle && t.tab) document.title = t.tab;  // the tab shows the progress
      this.announce(s, t, state);
      this.renderPreview(t);
      this.renderOutcome(s, t, state);
      this.renderActions(s, t);
      this.renderExtras(s, t);
      this.renderLog(s, t);
    }

    // The live region speaks on state changes and every 10 %, not on every event.
    announce(s, t, state) {
      const pct = s.bar && s.bar.percent;
      const key = state + ':' + (pct == null ? '' : Math.floor(pct / 10));
      if (key === this.keys.live) return;
      this.keys.live = key;
      setText(part(this.root, 'live'), t.live);
    }

    renderOutcome(s, t, state) {
      const box = part(this.root, 'outcome');
      if (!box) return;
      show(box, !!s.terminal);
      box.className = 'bf-outcome bf-outcome--' + state;
      setText(part(box, 'outcome-title'), t.outcome_title);
      setText(part(box, 'outcome-text'), t.outcome);
      setText(part(box, 'error'), s.error);
      show(part(box, 'error'), !!s.error);
    }

    // Buttons are rebuilt only when the set of actions changes, so hover and focus survive updates.
    renderActions(s, t) {
      const box = part(this.root, 'actions');
      const urls = s.action_urls || {};
      const offered = t.actions || {};
      const acts = (s.actions || []).filter((a) => offered[a] && urls[a]);
      if (this.confirming && acts.indexOf('cancel') < 0) this.confirming = false;
      const key = acts.join(',') + '|' + !!this.confirming;
      if (box && this.confirming) setText(box.querySelector('.bf-confirm__text'), t.confirm_cancel);  // the count now
      if (!box || key === this.keys.actions) return;
      this.keys.actions = key;
      const words = t.ui || {};
      const focused = box.contains(document.activeElement) && document.activeElement.getAttribute('data-bf-action');
      const button = (action, cls, text, attrs) => el('button', Object.assign({ type: 'button',
        class: 'bf-button ' + cls, 'data-bf-action': action, 'aria-disabled': this.busy ? 'true' : null }, attrs), [text]);
      if (this.confirming) {
        const id = 'bf-' + ++uid + '-confirm';
        fill(box, [el('div', { class: 'bf-confirm', role: 'group', 'aria-labelledby': id }, [
          el('p', { id, class: 'bf-confirm__text', text: t.confirm_cancel }),
          el('div', { class: 'bf-actions__row' }, [
            button('confirm-cancel', 'bf-button--danger', words.confirm_yes),
            button('keep', '', words.confirm_no)])])]);
        box.querySelector('[data-bf-action="keep"]').focus();
        return;
      }
      const hintId = 'bf-' + ++uid + '-hint';
      const buttons = acts.map((a) => button(a, 'bf-button--' + a, offered[a].label,
        { title: offered[a].tip, 'aria-describedby': t.hint ? hintId : null }));
      fill(box, [buttons.length ? el('div', { class: 'bf-actions__row' }, buttons) : null,
        buttons.length && t.hint ? el('p', { class: 'bf-hint', id: hintId, text: t.hint }) : null]);
      if (focused) {  // keep the keyboard user in the action bar, or move them to the outcome
        const again = box.querySelector('[data-bf-action="' + focused + '"]') || box.querySelector('button');
        (again || part(this.root, 'outcome')).focus();
      }
    }

    renderExtras(s, t) {
      const root = this.root;
      const words = t.ui || {};
      const hasResults = !!s.results && typeof s.results === 'object' && Object.keys(s.results).length > 0;
      const download = safeUrl(s.download_url);
      const report = safeUrl(s.results_url);
      const back = s.terminal && safeUrl(s.redirect_url, true);
      const dl = part(root, 'download');
      const offerDownload = !!download && !this.cleanedUp;
      setAttr(dl, 'href', offerDownload ? download : null);
      setAttr(dl, 'download', s.file_name || '');
      setText(dl, t.download);
      show(dl, offerDownload);
      setText(part(root, 'downloaded'), words.downloaded);
      show(part(root, 'downloaded'), !!download && !!this.cleanedUp);
      // The links: only those that apply exist, so an unsafe URL is never even a dead link.
      // An import hands its rejected rows back as the file to fix, once it has ended: its report.
      const rejected = s.terminal && s.bad > 0 ? safeUrl(s.rejected_url) : null;
      const offerReport = !!report && (s.bad > 0 || hasResults) && !rejected;
      const links = part(root, 'links');
      const failedPage = offerReport && s.bad > 0 ? withQuery(report, 'which=errors') : null;
      const key = JSON.stringify([back, offerReport && report, t.report, failedPage, rejected, !!this.redirecting, words.back]);
      if (links && key !== this.keys.links) {
        this.keys.links = key;
        fill(links, [
          back ? el('a', { class: 'bf-button', href: back, 'data-bf': 'back', text: words.back }) : null,
          offerReport ? el('a', { class: 'bf-link', href: withQuery(report, 'format=csv'), 'data-bf': 'report', text: t.report }) : null,
          failedPage ? el('a', { class: 'bf-link', href: failedPage, 'data-bf': 'failed-page', text: words.see_failed }) : null,
          rejected ? el('a', { class: 'bf-link', href: rejected, download: '', 'data-bf': 'rejected', text: words.rejected }) : null,
          back && this.redirecting ? el('span', { class: 'bf-subtle', text: words.going_back }) : null,
          back && this.redirecting ? el('button', { type: 'button', class: 'bf-linkbutton', 'data-bf-action': 'stay', text: words.stay }) : null]);
        show(links, !!(back || offerReport || rejected));
      }
      const table = part(root, 'results');
      if (table) {
        setText(table.querySelector('caption'), words.results);
        const key = hasResults ? JSON.stringify(s.results) : '';
        if (key !== this.keys.results) {
          this.keys.results = key;
          fill(part(root, 'results-rows'), !hasResults ? [] : Object.keys(s.results).map((k) => {
            const v = s.results[k];
            return el('tr', {}, [el('th', { scope: 'row', text: k }),
              el('td', { text: v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v) })]);
          }));
        }
        show(table, hasResults);
      }
      show(part(root, 'extras'), offerDownload || !!back || offerReport || !!rejected || hasResults || (!!download && !!this.cleanedUp));
    }

    // A preview that waits for its Confirm: its summary, a sample and the first rejections.
    renderPreview(t) {
      const box = part(this.root, 'preview'), pv = t.preview || {}, key = JSON.stringify(pv);
      if (!box || key === this.keys.preview) return;
      this.keys.preview = key;
      show(box, !!pv.summary);
      setText(part(box, 'preview-summary'), pv.summary);
      setText(part(box, 'preview-rejected'), pv.rejected);
      show(part(box, 'preview-rejected'), !!pv.rejected);
      ['sample', 'errors'].forEach((k) => {
        const wrap = part(box, 'preview-' + k + '-box'), lines = pv[k] || [];
        setText(wrap.querySelector('.bf-preview__caption'), (t.ui || {})['preview_' + k]);
        fill(part(box, 'preview-' + k), lines.map((line) => el('li', {}, typeof line === 'string' ? [line]
          : [el('span', { class: 'bf-preview__id', text: line[0] }), ' ' + line[1]])));
        show(wrap, lines.length > 0);
      });
    }

    renderLog(s, t) {
      const log = part(this.root, 'log');
      if (!log) return;
      setText(log.querySelector('.bf-log__title'), (t.ui || {}).activity);
      const entries = t.log || [];
      const key = JSON.stringify(entries);
      if (key === this.keys.log) return;
      this.keys.log = key;
      show(log, entries.length > 1);  // a single message is already on show as the status message
      fill(part(this.root, 'messages'), entries.map((m) => el('li', { class: 'bf-log__item' }, [
        m.iso ? el('time', { datetime: m.iso, 'data-bf-local': 'clock', text: m.time }) : null,
        el('span', { class: 'bf-log__text', text: m.text })])));
      log.querySelectorAll('time[data-bf-local]').forEach(localise);
    }

    onClick(e) {
      if (e.target.closest('[data-bf-download]')) { this.downloaded = true; return; }
      const btn = e.target.closest('[data-bf-action]');
      if (!btn || !this.status || btn.getAttribute('aria-disabled') === 'true') return;
      const action = btn.getAttribute('data-bf-action');
      if (action === 'cancel' || action === 'keep') {  // Cancel undoes work: ask first
        this.confirming = action === 'cancel';
        this.renderActions(this.status, textOf(this.status));
        const cancel = part(this.root, 'actions').querySelector('[data-bf-action="cancel"]');
        if (cancel) cancel.focus();
      } else if (action === 'confirm-cancel') {
        this.confirming = false;
        this.act('cancel');
      } else if (action === 'stay') {
        clearTimeout(this.redirectTimer);
        this.redirecting = false;
        this.renderExtras(this.status, textOf(this.status));
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
      try { r = await requestJSON('POST', url, undefined, this.options.prefix); } catch (e) { r = null; }
      this.setBusy(false);
      if (!r) this.notice((textOf(this.status).ui || ui).network);
      else if (!r.ok) this.notice(errorText(r));
      else if (r.data && typeof r.data.status === 'string') this.update(r.data);
      else if (r.data && r.data.url) this.openJob(r.data);  // "retry" answers with a new job
      if (this.status) this.renderActions(this.status, textOf(this.status));
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
      setText(part(this.root, 'conn'), ok ? '' : (this.status && textOf(this.status).ui || ui).connection);
      show(part(this.root, 'conn'), !ok);
    }
    gone(r) {
      this.notice(errorText(r));  // the server's own "no such job"
      this.finish(this.status, true);
    }

    finish(s, initial) {
      this.done = true;
      if (this.feed) this.feed.stop();
      this.connection(true);
      this.resolve(s);
      if (!s) return;
      const notify = part(this.root, 'notify');
      if (notify) notify.remove();
      // Seen here: a page the server rendered ended already counts as seen (the server said so).
      if (!initial || !this.options.documentTitle) markSeen([s.id], this.options.prefix);
      // In the background: another tab in front, or another window (the person is elsewhere).
      const away = document.visibilityState === 'hidden' || !document.hasFocus();
      if (!initial && this.notifyMe && away) browserNotice(s);
      emit(this.root, 'batchflow:complete', s);
      call(this.options.onComplete, s);
      // Only a completion seen live goes back by itself, so a reload or the back button never loops.
      const back = safeUrl(s.redirect_url, true);
      if (!initial && back && stateOf(s) === 'completed' && !s.download_url && this.options.autoRedirect !== false) {
        this.redirecting = true;
        this.renderExtras(s, textOf(s));
        const delay = this.options.redirectDelay != null ? this.options.redirectDelay : SETTINGS.redirectDelayMs;
        this.redirectTimer = setTimeout(() => location.assign(back), delay);
      }
    }

    // "Notify me when done": asks for the browser's permission on click only, where it can be given.
    offerNotify() {
      const actions = part(this.root, 'actions');
      if (!('Notification' in window) || Notification.permission === 'denied' || !actions || part(this.root, 'notify')) return;
      const words = ui;
      const note = el('span', { class: 'bf-subtle', 'data-bf': 'notify-note', role: 'status' });
      const btn = el('button', { type: 'button', class: 'bf-button bf-button--quiet', text: words.notify_me || 'Notify me when done' });
      const box = el('p', { class: 'bf-notify', 'data-bf': 'notify' }, [btn, note]);
      const granted = () => { this.notifyMe = true; btn.remove(); setText(note, words.notify_on); };
      btn.addEventListener('click', () => {
        if (Notification.permission === 'granted') return granted();
        Promise.resolve(Notification.requestPermission()).then((answer) => {
          if (answer === 'granted') granted();
          else { btn.remove(); setText(note, words.notify_blocked); }
        });
      });
      actions.after(box);
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
      this.renderExtras(s, textOf(s));
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

  // A modal around an empty view; its words (close, the footer) arrive with the first status.
  function openDialog(urls) {
    const root = el('section', { class: 'bf-job bf-job--dialog' });
    const close = el('button', { type: 'button', class: 'bf-dialog__close' }, ['×']);
    const page = safeUrl(urls.url, true);
    const foot = el('p', { class: 'bf-dialog__foot', hidden: true }, [el('span', { 'data-bf': 'keeps-running' }), ' ',
      page ? el('a', { class: 'bf-link', href: page, 'data-bf': 'open-page' }) : null]);
    const dialog = el('dialog', { class: 'bf-dialog' }, [el('div', { class: 'bf-dialog__inner' }, [close, root])]);
    // Once the job has ended, nothing "keeps running": the footer keeps only the page link.
    const words = (w, ended) => {
      setAttr(close, 'aria-label', w.close);
      setAttr(close, 'title', ended ? w.close : w.close_tip);
      setText(part(foot, 'keeps-running'), ended ? '' : w.keeps_running);
      show(part(foot, 'keeps-running'), !ended);
      setText(part(foot, 'open-page'), w.open_page);
      show(foot, ended ? !!(page && w.open_page) : !!w.keeps_running);
    };
    words(ui, false);
    document.body.appendChild(dialog);
    close.addEventListener('click', () => dialog.close());
    dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); });  // the backdrop
    root.addEventListener('batchflow:update', (e) => words((e.detail.text || {}).ui || {}, !!e.detail.terminal));
    if (dialog.showModal) dialog.showModal(); else dialog.setAttribute('open', '');
    return { dialog, root, foot };
  }

  function progress(target, options) {
    options = Object.assign({}, options);
    const urls = resolveUrls(target, options.prefix);
    let root = options.container;
    if (root && !root.matches('[data-batchflow-job], .bf-job')) root = root.appendChild(el('section', { class: 'bf-job' }));
    const modal = root ? null : openDialog(urls);
    const view = new JobView(root || modal.root, urls, options);
    if (modal) {  // closing the dialog stops watching; the job itself keeps running
      modal.root.append(modal.foot);
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
      r = await requestJSON('POST', jobPrefix(prefix) + '/start/' + encodeURIComponent(handler), payload, prefix);
    } catch (e) { throw new Error(ui.network || e.message); }
    if (!r.ok || !r.data || !(r.data.status_url || r.data.id)) throw new Error(errorText(r));
    return r.data;
  }

  async function start(handler, body, options) {
    options = options || {};
    return progress(await requestStart(handler, body, options.prefix), options);
  }

  function parseData(node, name) {
    const raw = node.getAttribute(name);
    if (raw == null || raw === '') return undefined;
    try { return JSON.parse(raw); } catch (e) { throw new Error('batchflow: invalid JSON in ' + name); }
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
    const t = textOf(s);
    const state = stateOf(s);
    setStateClass(row, 'bf-row--', state);
    row.setAttribute('data-terminal', String(!!s.terminal));
    renderBadge(part(row, 'badge'), state, t);
    applyBar(part(row, 'bar'), part(row, 'percent'), s, t);
    setText(part(row, 'good'), (t.counts || {}).good);  // an app's own jobs.html may keep Done
    setText(part(row, 'bad'), (t.counts || {}).bad);    // and Failed cells
    setText(part(row, 'summary'), t.summary);  // the jobs list's Result column
    setText(part(row, 'duration'), t.duration);
    const started = part(row, 'started');
    if (started && t.started_iso && !started.querySelector('time')) {
      fill(started, [el('time', { datetime: t.started_iso, 'data-bf-local': 'datetime', text: t.started })]);
      localise(started.querySelector('time'));
    }
  }
  // ---------------------------------------------------------------- notifications
  function browserNotice(s) {
    const t = textOf(s);
    try {
      const n = new Notification(t.title || '', { body: [t.outcome_title, t.outcome].filter(Boolean).join(' — '), tag: 'batchflow-' + s.id });
      n.onclick = () => { window.focus(); n.close(); };
    } catch (e) { /* a browser that only notifies from a service worker */ }
  }
  const TOASTED = 'batchflow:toasted';  // the endings this browser has toasted already
  function toasted(key) {
    let keys = [];
    try { keys = JSON.parse(localStorage.getItem(TOASTED) || '[]'); } catch (e) { keys = []; }
    if (key == null) return keys;
    try { localStorage.setItem(TOASTED, JSON.stringify(keys.concat([key]).slice(-200))); } catch (e) { /* private mode */ }
  }
  function showUnseen(count) {
    document.querySelectorAll('[data-batchflow-unseen]').forEach((node) => {
      node.textContent = String(count);
      if (node.hasAttribute('data-hide-zero')) node.hidden = count === 0;
    });
  }
  async function markSeen(ids, prefix) {
    document.querySelectorAll('.bf-toast').forEach((node) => { if (ids.indexOf(node.getAttribute('data-job')) >= 0) node.remove(); });
    try {
      const r = await requestJSON('POST', jobPrefix(prefix) + '/notifications/seen', { ids: ids }, prefix);
      if (r.ok && r.data) showUnseen(r.data.unseen);
    } catch (e) { /* offline: the toast comes back, and can be dismissed again */ }
  }
  function showToast(n, words) {
    let region = document.querySelector('.bf-toasts');
    if (!region) document.body.append(region = el('div', { class: 'bf-toasts', role: 'region', 'aria-label': words.region, 'aria-live': 'polite' }));
    const link = safeUrl(n.action_url, true);
    const close = el('button', { type: 'button', class: 'bf-toast__close', 'aria-label': words.dismiss, title: words.dismiss, text: '×' });
    const action = link ? el('a', { class: 'bf-toast__action', href: link, text: n.action }) : null;
    region.append(el('div', { class: 'bf-toast bf-toast--' + n.state, 'data-job': n.job_id }, [
      el('p', { class: 'bf-toast__title', text: n.title }),
      el('p', { class: 'bf-toast__text', text: [n.headline, n.summary].filter(Boolean).join(' — ') }), action, close]));
    [close, action].forEach((node) => node && node.addEventListener('click', () => markSeen([n.job_id])));
  }
  let notifyTimer = null;
  let notifyOff = false;
  async function pollNotifications() {
    clearTimeout(notifyTimer);
    if (notifyOff || !SETTINGS.notifyPollMs) return;
    const r = await requestJSON('GET', jobPrefix() + '/notifications').catch(() => null);
    if (r && [401, 403, 404].indexOf(r.status) >= 0) { notifyOff = true; return; }  // nobody to tell here
    if (r && r.ok && r.data) {
      showUnseen(r.data.unseen);
      const shown = toasted();
      r.data.notifications.slice().reverse().forEach((n) => {
        // A job on this very page tells its own ending; each ending is toasted once per browser.
        if (document.querySelector('[data-batchflow-job="' + n.job_id + '"]') || shown.indexOf(n.key) >= 0) return;
        toasted(n.key);
        showToast(n, r.data.text || {});
      });
    }
    if (document.visibilityState === 'visible') notifyTimer = setTimeout(pollNotifications, SETTINGS.notifyPollMs);
  }
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') pollNotifications(); });

  function init(scope) {
    scope = scope || document;
    scope.querySelectorAll('time[data-bf-local]').forEach(localise);
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
        }, SETTINGS.rowPollMs);
        feed.start(SETTINGS.rowDelayMs + i * SETTINGS.rowStaggerMs);
      });
    });
  }

  document.addEventListener('click', (e) => {
    const btn = e.target.closest && e.target.closest('[data-batchflow-start]');
    if (!btn) return;
    e.preventDefault();
    onStartClick(btn);
  });
  addStyles();
  const ready = () => { init(); pollNotifications(); };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', ready);
  else ready();

  window.batchflow = { progress, start, init, configure, version: '0.2.0' };
})();
