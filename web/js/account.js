// "Networks & account": the person's own networks (add, edit, connect or
// disconnect, remove after a confirmation), their channels (join, leave) and their
// password, through the user API (`POST /api/networks`, `PATCH`/`DELETE
// /api/networks/{name}`, `/api/networks/{name}/channels`, `POST /api/me/password`).
// Errors show next to what was being done. After a change to the networks the app
// reconnects its websocket (`onChanged`), so the sidebar shows them as they are.

import { el } from './render.js';

const $ = (id) => document.getElementById(id);
/** How often the open list refreshes its connection states. */
const POLL = 2000;

export class Account {
  constructor({ api, onChanged }) {
    this.api = api;
    this.onChanged = onChanged;
    this.editing = null;   // name of the network being edited, null when adding
    this.detail = null;    // name of the network whose detail is shown
    this.timer = null;
    this.networks = [];
    this.passwordChangeAt = 0; // when this page last asked to change the password
    $('account-open').addEventListener('click', () => this.open());
  }

  /** Puts the dialog in the page (from its template) the first time it opens. */
  ensure() {
    if ($('account')) return;
    document.body.append($('account-template').content.cloneNode(true));
    $('account-close').addEventListener('click', () => this.close());
    $('account').addEventListener('close', () => this.stopPolling());
    $('acct-add').addEventListener('click', () => this.showForm(null));
    $('net-cancel').addEventListener('click', () => this.showList());
    $('net-back').addEventListener('click', () => this.showList());
    $('net-form').addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    $('net-edit').addEventListener('click', () => this.showForm(this.detail));
    $('net-toggle').addEventListener('click', () => this.toggle());
    $('net-remove').addEventListener('click', () => {
      $('net-confirm-text').textContent = `Remove ${this.detail}? Ferry disconnects from it and deletes its backlog.`;
      $('net-confirm').hidden = false;
      $('net-confirm-no').focus();
    });
    $('net-confirm-no').addEventListener('click', () => { $('net-confirm').hidden = true; });
    $('net-confirm-yes').addEventListener('click', () => this.remove());
    $('chan-form').addEventListener('submit', (e) => { e.preventDefault(); this.join(); });
    $('pw-form').addEventListener('submit', (e) => { e.preventDefault(); this.changePassword(); });
  }

  open() {
    this.ensure();
    const d = $('account');
    if (!d.open) d.showModal();
    this.showList();
  }

  close() {
    $('account')?.close();
  }

  stopPolling() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** Shows one of the panes: the list, the form or a network's detail. */
  pane(which) {
    $('acct-list').hidden = which !== 'list';
    $('net-form').hidden = which !== 'form';
    $('net-detail').hidden = which !== 'detail';
  }

  async showList() {
    this.detail = null;
    this.pane('list');
    await this.refresh();
  }

  /** Whether this page asked for a password change in the last few seconds (the
   * server then closes this page's websocket too; its login session stays). */
  changedPasswordRecently() {
    return Date.now() - this.passwordChangeAt < 15_000;
  }

  /** Reloads the networks and their states; keeps doing so while the dialog is open. */
  async refresh() {
    this.stopPolling();
    try {
      this.networks = await this.api('/api/networks');
    } catch {
      // Offline for a moment: the next round tries again.
    }
    this.renderList();
    if (this.detail) await this.renderDetail();
    if ($('account')?.open) this.timer = setTimeout(() => this.refresh(), POLL);
  }

  renderList() {
    const ul = $('acct-networks');
    ul.replaceChildren(...this.networks.map((n) => el('li', { dataset: { network: n.name, state: n.state } },
      el('span', { class: 'name' }, n.name),
      el('span', { class: 'state' }, stateText(n)),
      el('button', { type: 'button', 'aria-label': `Settings of ${n.name}`, onclick: () => this.showDetail(n.name) }, 'Settings'))));
    $('acct-empty').hidden = this.networks.length > 0;
  }

  async showDetail(name) {
    this.detail = name;
    $('net-confirm').hidden = true;
    $('net-detail-error').textContent = '';
    $('chan-error').textContent = '';
    this.pane('detail');
    await this.renderDetail();
  }

  async renderDetail() {
    const name = this.detail;
    let s;
    try {
      s = await this.api(`/api/networks/${encodeURIComponent(name)}`);
    } catch (err) {
      $('net-detail-error').textContent = err.message;
      return;
    }
    if (this.detail !== name) return;
    this.settings = s;
    const live = this.networks.find((n) => n.name === name);
    $('net-detail-title').textContent = `${s.name} · ${s.addr}${s.tls ? ' (TLS)' : ''}`;
    $('net-state').textContent = s.enabled ? (live ? stateText(live) : '') : 'Disconnected (you turned it off)';
    $('net-state').dataset.state = s.enabled ? (live?.state || '') : 'off';
    $('net-toggle').textContent = s.enabled ? 'Disconnect' : 'Connect';
    $('net-chanlist').replaceChildren(...s.channels.map((c) => el('li', { dataset: { channel: c.name } },
      el('span', { class: 'name' }, c.name + (c.has_key ? ' 🔑' : '')),
      el('button', { type: 'button', 'aria-label': `Leave ${c.name}`, onclick: () => this.part(c.name) }, 'Leave'))));
    if (!s.channels.length) $('net-chanlist').replaceChildren(el('li', { class: 'acct-note' }, 'No channels.'));
  }

  showForm(name) {
    this.editing = name;
    const s = name ? this.settings : null;
    $('net-form-title').textContent = name ? `Edit ${name}` : 'Add network';
    $('net-save').textContent = name ? 'Save' : 'Add';
    $('net-name').value = s?.name || '';
    $('net-name').disabled = !!name;
    $('net-addr').value = s?.addr || '';
    $('net-tls').checked = s ? s.tls : true;
    $('net-verify').value = s && s.tls_verify !== 'verify' ? s.tls_verify : '';
    $('net-nick').value = s?.nick || '';
    $('net-username').value = s?.username || '';
    $('net-realname').value = s?.realname || '';
    $('net-sasl-account').value = s?.sasl_account && s.sasl_account !== 'external' ? s.sasl_account : '';
    $('net-sasl-password').value = '';
    $('net-sasl-password').placeholder = s?.sasl_account ? 'unchanged' : '';
    $('net-sasl-clear').checked = false;
    $('net-sasl-clear-row').hidden = !s?.sasl_account;
    $('net-channels-row').hidden = !!name;
    $('net-channels').value = '';
    $('net-error').textContent = '';
    this.pane('form');
    (name ? $('net-addr') : $('net-name')).focus();
  }

  async save() {
    const v = (id) => $(id).value.trim();
    const err = $('net-error');
    err.textContent = '';
    const body = {
      addr: v('net-addr'),
      tls: $('net-tls').checked,
      nick: v('net-nick'),
      username: v('net-username'),
      realname: v('net-realname'),
    };
    if (v('net-verify')) body.tls_verify = v('net-verify');
    const account = v('net-sasl-account');
    const password = $('net-sasl-password').value;
    if ($('net-sasl-clear').checked) body.sasl = null;
    else if (account && password) body.sasl = { account, password };
    else if (account && !this.editing) { err.textContent = 'Give the SASL password too, or leave the account empty.'; return; }
    try {
      if (this.editing) {
        if (!v('net-verify')) body.tls_verify = 'verify';
        await this.api(`/api/networks/${encodeURIComponent(this.editing)}`, { method: 'PATCH', body: JSON.stringify(body) });
      } else {
        body.name = v('net-name');
        if (!body.username) delete body.username;
        if (!body.realname) delete body.realname;
        body.channels = v('net-channels').split(',').map((c) => c.trim()).filter(Boolean).map((c) => {
          const [name, key] = c.split(/\s+/);
          return key ? { name, key } : { name };
        });
        await this.api('/api/networks', { method: 'POST', body: JSON.stringify(body) });
      }
    } catch (e) {
      err.textContent = explain(e);
      return;
    }
    const name = this.editing || body.name;
    this.onChanged();
    await this.showDetail(name);
    await this.refresh();
  }

  async toggle() {
    const err = $('net-detail-error');
    err.textContent = '';
    try {
      await this.api(`/api/networks/${encodeURIComponent(this.detail)}`, { method: 'PATCH', body: JSON.stringify({ enabled: !this.settings.enabled }) });
    } catch (e) {
      err.textContent = explain(e);
      return;
    }
    this.onChanged();
    await this.refresh();
  }

  async remove() {
    const err = $('net-detail-error');
    err.textContent = '';
    const name = this.detail;
    try {
      await this.api(`/api/networks/${encodeURIComponent(name)}`, { method: 'DELETE' });
    } catch (e) {
      err.textContent = explain(e);
      return;
    }
    this.onChanged(name);
    await this.showList();
  }

  async join() {
    const err = $('chan-error');
    err.textContent = '';
    const name = $('chan-name').value.trim();
    const key = $('chan-key').value.trim();
    try {
      await this.api(`/api/networks/${encodeURIComponent(this.detail)}/channels`, { method: 'POST', body: JSON.stringify(key ? { name, key } : { name }) });
    } catch (e) {
      err.textContent = explain(e);
      return;
    }
    $('chan-name').value = '';
    $('chan-key').value = '';
    await this.settled();
  }

  async part(channel) {
    const err = $('chan-error');
    err.textContent = '';
    try {
      await this.api(`/api/networks/${encodeURIComponent(this.detail)}/channels/${encodeURIComponent(channel)}`, { method: 'DELETE' });
    } catch (e) {
      err.textContent = explain(e);
      return;
    }
    await this.settled();
  }

  /** A join or part goes to the server; the list follows once it answered. */
  async settled() {
    await this.renderDetail();
    setTimeout(() => { if (this.detail) this.renderDetail(); }, 700);
  }

  async changePassword() {
    const err = $('pw-error');
    const done = $('pw-done');
    err.textContent = '';
    done.textContent = '';
    if ($('pw-new').value !== $('pw-again').value) { err.textContent = 'The new passwords differ.'; return; }
    this.passwordChangeAt = Date.now();
    try {
      await this.api('/api/me/password', { method: 'POST', body: JSON.stringify({ current: $('pw-current').value, new: $('pw-new').value }) });
    } catch (e) {
      err.textContent = e.code === 'invalid_credentials' ? 'The current password is wrong.' : explain(e);
      return;
    }
    for (const id of ['pw-current', 'pw-new', 'pw-again']) $(id).value = '';
    done.textContent = 'Password changed. Your other sessions were logged out.';
  }
}

/** A network's state in a few words. */
function stateText(n) {
  switch (n.state) {
    case 'connected': return `Connected as ${n.nick}`;
    case 'connecting': return n.last_error ? `Connecting… (last error: ${n.last_error})` : 'Connecting…';
    case 'disconnected': return `Disconnected${n.reason ? `: ${n.reason}` : ''}`;
    case 'stopped': return 'Disconnected';
    default: return n.state || '';
  }
}

/** An API error in words for the person: the server's message says what to fix. */
function explain(e) {
  if (e.code === 'owner_unreachable') return 'The server running your session did not answer; nothing changed. Try again.';
  if (e.status === 429) return 'Too many attempts; wait a minute.';
  return e.message || 'Something went wrong.';
}
