// Builds the page from data. Every string becomes a text node or an attribute
// value, never markup: nothing the server sends is ever parsed as HTML.

/** An element: `h('a', {href: '#/bots', class: 'link'}, 'Bots', child, ...)`.
 *  Attributes named `on...` are event listeners; null, undefined and false
 *  attributes and children are left out; arrays of children are flattened. */
export function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'class') element.className = value;
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  appendAll(element, children);
  return element;
}

/** Replaces what `element` holds with `children`. */
export function fill(element, ...children) {
  element.replaceChildren();
  appendAll(element, children);
  return element;
}

function appendAll(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** The UI's address of a task, a bot, or a list with filters. */
export const href = {
  task: (taskId) => `#/task/${encodeURIComponent(taskId)}`,
  bot: (botId) => `#/bot/${encodeURIComponent(botId)}`,
  tasks: (query) => withQuery('#/tasks', query),
  bots: (query) => withQuery('#/bots', query),
};

function withQuery(path, query) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    for (const one of [].concat(value)) if (one !== undefined && one !== '') search.append(key, one);
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}

/** A link to a task (`-` when there is no id). */
export function taskLink(taskId, label) {
  if (!taskId) return h('span', { class: 'muted' }, '-');
  return h('a', { href: href.task(taskId), class: 'id' }, label || taskId);
}

/** A link to a bot (`-` when there is no id). */
export function botLink(botId) {
  if (!botId) return h('span', { class: 'muted' }, '-');
  return h('a', { href: href.bot(botId), class: 'id' }, botId);
}
