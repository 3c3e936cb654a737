// The console page's script: asks the portal for a single-use ticket (an audited POST), then
// opens the WebSocket proxy with it and attaches xterm.js (serial) or noVNC (graphical).
import { errorWords } from '/app-error.js';

const box = document.getElementById('console');
const status = document.getElementById('console-status');

function say(text, kind) {
  status.textContent = text;
  status.className = kind === 'error' ? 'form-error' : kind === 'ok' ? 'notice ok' : 'muted';
  box.dataset.state = kind || 'info';
}

// The portal's error (its JSON form) as a sentence.
function message(json, code) {
  return errorWords(json, `The console could not be opened (${code}).`);
}

async function ticket() {
  const body = new URLSearchParams({ host_id: box.dataset.host, uuid: box.dataset.uuid, kind: box.dataset.kind });
  const res = await fetch('/api/open_console', { method: 'POST', body, headers: { Accept: 'application/json' } });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(message(json, res.status));
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${json.url}`;
}

function ended(event) {
  const why = event && event.reason ? event.reason : 'the connection closed';
  say(`Console closed: ${why}. Reload the page to open it again.`, 'error');
}

async function serial(url) {
  await import('/vendor/xterm/xterm.js');
  const term = new globalThis.Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, rows: 30 });
  term.open(box);
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  ws.onopen = () => {
    say('Connected. Press Enter if the screen stays empty.', 'ok');
    term.focus();
  };
  ws.onmessage = (e) => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
  ws.onclose = ended;
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
  globalThis.conciergeConsole = { term, ws };
}

async function graphical(url) {
  const { default: RFB } = await import('/vendor/novnc/core/rfb.js');
  const rfb = new RFB(box, url);
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  rfb.addEventListener('connect', () => say('Connected.', 'ok'));
  rfb.addEventListener('disconnect', (e) => ended({ reason: e.detail.clean ? 'the connection closed' : 'the connection was lost' }));
  globalThis.conciergeConsole = { rfb };
}

if (box) {
  ticket()
    .then((url) => (box.dataset.kind === 'graphical' ? graphical(url) : serial(url)))
    .catch((e) => say(e.message, 'error'));
}
