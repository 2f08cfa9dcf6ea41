// The UI's entry point: the header with the sign-in state, and the routes.

import { CODE, session } from './api.js';
import { fill, h } from './dom.js';
import { botPage } from './pages/bot.js';
import { botsPage } from './pages/bots.js';
import { signinPage } from './pages/signin.js';
import { taskPage } from './pages/task.js';
import { tasksPage } from './pages/tasks.js';
import { currentLocation, startRouter } from './router.js';
import { errorBox } from './widgets.js';

const ROUTES = [
  [/^\/tasks$/, tasksPage],
  [/^\/task\/([^/]+)$/, taskPage],
  [/^\/bots$/, botsPage],
  [/^\/bot\/([^/]+)$/, botPage],
  [/^\/signin$/, signinPage],
];

/** The header's right side: who is signed in, and the way in or out. */
function drawSession() {
  const area = document.getElementById('session');
  if (session.token()) {
    fill(area, h('span', { class: 'signed-in', id: 'signed-in' }, 'Signed in with a token'),
      h('button', { class: 'button small', id: 'sign-out', onclick: signOut }, 'Sign out'));
  } else {
    fill(area, session.openAccess ? h('span', { id: 'open-access', title: 'This daemon needs no token' }, 'Open access') : null,
      h('a', { class: 'button small', id: 'sign-in', href: '#/signin' }, 'Sign in'));
  }
}

function signOut() {
  session.signOut();
  window.dispatchEvent(new Event('apiary:session'));
  location.hash = '#/signin';
}

/** Marks the header link of the section shown. */
function markSection(event) {
  const section = event.detail.path.startsWith('/bot') ? 'bots' : event.detail.path.startsWith('/task') ? 'tasks' : '';
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('active', link.dataset.nav === section);
  }
}

/** A page that failed: a call without a valid token leads to the sign-in page. */
function showError(error, outlet) {
  if (error.code === CODE.UNAUTHENTICATED) {
    const { path, query } = currentLocation();
    if (path !== '/signin') {
      const back = query.toString() ? `${path}?${query}` : path;
      location.replace(`#/signin?next=${encodeURIComponent(back)}&why=${encodeURIComponent(error.message)}`);
      return;
    }
  }
  fill(outlet, h('h1', {}, 'Something went wrong'), errorBox(error));
}

window.addEventListener('apiary:session', drawSession);
window.addEventListener('apiary:route', markSection);
drawSession();
document.body.dataset.ready = 'true';
startRouter(document.getElementById('main'), ROUTES, '#/tasks', showError);
