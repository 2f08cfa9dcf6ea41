// Sign-in with a bearer token: kept in this tab's sessionStorage only, sent as
// `Authorization: Bearer` with every call, and checked with GetPermissions.

import { CODE, server, session } from '../api.js';
import { fill, h } from '../dom.js';
import { describeError } from '../widgets.js';

export async function signinPage(outlet, { query }) {
  const next = query.get('next') || '/tasks';
  const why = query.get('why');
  const message = h('div', { id: 'signin-message' });
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'paste your token', required: true });
  const form = h('form', { class: 'signin-form', id: 'signin-form', onsubmit: (event) => {
    event.preventDefault();
    signIn(token.value, next, message);
  } },
  h('label', { for: 'token' }, 'Token'), token,
  h('button', { class: 'button primary', type: 'submit', id: 'signin-submit' }, 'Sign in'));
  fill(outlet,
    h('section', { class: 'card signin' },
      h('h1', {}, 'Sign in'),
      why ? h('div', { class: 'notice warning', id: 'signin-why' }, `This daemon needs a token. It said: ${why}`) : null,
      h('p', {}, 'Apiary knows people and services by a token, the same one ',
        h('code', {}, 'apiary --token-file'), ' reads. It stays in this browser tab only and is forgotten when the tab closes.'),
      session.token() ? h('p', { class: 'muted' }, 'A token is in use now; a new one replaces it.') : null,
      form, message));
  token.focus();
}

async function signIn(text, next, message) {
  if (!text.trim()) return;
  session.signIn(text);
  try {
    await server.permissions({});
  } catch (error) {
    if (error.code === CODE.UNAUTHENTICATED) session.signOut();
    fill(message, h('div', { class: 'error', role: 'alert' },
      error.code === CODE.UNAUTHENTICATED ? `The daemon does not accept this token: ${error.message}` : describeError(error)));
    window.dispatchEvent(new Event('apiary:session'));
    return;
  }
  window.dispatchEvent(new Event('apiary:session'));
  location.hash = `#${next}`;
}
