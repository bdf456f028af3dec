// Sign-up with an invite link (`/#invite=<token>`, from `ferry user invite`): the
// page asks the server whether the invite is still good (`GET /api/invites/{token}`),
// then lets the person choose a name and password (`POST /api/invites/{token}`), which
// creates the account and logs in. The view is made from its template only when the
// URL carries an invite, so the login form's labels stay the only "Username" and
// "Password" otherwise. Errors show in the form.

const $ = (id) => document.getElementById(id);

/** The invite token in the URL: the token, '' for a malformed one, null for none. */
export function inviteToken() {
  if (!location.hash.startsWith('#invite=')) return null;
  const t = location.hash.slice('#invite='.length);
  return /^[0-9a-f]{64}$/.test(t) ? t : '';
}

/** Forgets the invite in the URL (it is used up, or the person went to log in). */
function dropInvite() {
  history.replaceState(null, '', location.pathname + location.search);
}

/**
 * Shows the sign-up view for `token`. `onDone(login)` gets the login answer
 * (`{token, user}`) once the account exists; `onLogin()` goes to the login form.
 */
export async function showSignUp({ api, token, onDone, onLogin }) {
  if (!$('signup')) document.body.append($('signup-template').content.cloneNode(true));
  $('login').hidden = true;
  $('app').hidden = true;
  $('signup').hidden = false;
  const form = $('signup-form');
  const error = $('signup-error');
  const note = $('signup-note');
  const setEnabled = (on) => {
    for (const e of form.querySelectorAll('input, button[type="submit"]')) e.disabled = !on;
  };
  $('signup-login').addEventListener('click', (e) => {
    e.preventDefault();
    dropInvite();
    $('signup').remove();
    onLogin();
  });

  setEnabled(false);
  note.textContent = 'Checking your invite…';
  try {
    if (!token) throw new Error('This invite link is not valid: it is cut short or mistyped.');
    const offer = await api(`/api/invites/${token}`);
    const until = new Date(offer.expires_at);
    note.textContent = `You were invited to ${offer.admin ? 'an admin account on ' : ''}this Ferry. `
      + `The invite works once, until ${until.toLocaleString()}.`;
    setEnabled(true);
    $('signup-name').focus();
  } catch (err) {
    note.textContent = '';
    error.textContent = err.status === 429 ? 'Too many attempts from your address; wait a minute and reload.' : err.message;
    return;
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const name = $('signup-name').value.trim();
    const password = $('signup-password').value;
    if (!name) { error.textContent = 'Choose a name.'; $('signup-name').focus(); return; }
    if (password !== $('signup-again').value) {
      error.textContent = 'The two passwords differ.';
      $('signup-again').focus();
      return;
    }
    setEnabled(false);
    try {
      const r = await api(`/api/invites/${token}`, { method: 'POST', body: JSON.stringify({ name, password }) });
      dropInvite();
      $('signup').remove();
      onDone(r);
    } catch (err) {
      setEnabled(err.code !== 'invite_invalid' && err.code !== 'invites_disabled');
      error.textContent = err.status === 429 ? 'Too many attempts from your address; wait a minute.' : err.message;
      if (err.code === 'conflict' || /name/.test(err.message)) $('signup-name').focus();
      else if (/password/.test(err.message)) $('signup-password').focus();
    }
  });
}
