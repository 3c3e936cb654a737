// Browser uploads for the image library: the file goes in 8 MiB chunks (PUT, each written
// to the host's pool by libvirt at its offset), so a cut connection loses one chunk at most
// and the upload resumes where the server says it stands. Listeners sit on the document, so
// they work however the page was reached (this module runs once per page load).
import { errorWords } from '/app-error.js';

const CHUNK = 8 * 1024 * 1024;

// An AppError as the server sends it, in words.
function words(json, code) {
  return errorWords(json, `The upload failed (HTTP ${code}).`);
}

class Refused extends Error {
  constructor(json, code) {
    super(words(json, code));
    this.json = json;
    this.code = code;
  }
}

async function call(endpoint, fields) {
  const res = await fetch(`/api/${endpoint}`, {
    method: 'POST',
    body: new URLSearchParams(fields),
    headers: { Accept: 'application/json' },
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Refused(json, res.status);
  return json;
}

function show(form, text, kind) {
  const status = form.querySelector('.upload-status');
  if (!status) return;
  status.textContent = text;
  status.className = `upload-status small ${kind === 'error' ? 'form-error' : 'muted'}`;
}

function fieldErrors(form, json) {
  form.querySelectorAll('.field-error[id^="up-"]').forEach((p) => { p.hidden = true; p.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
  const list = json && json.Invalid;
  if (!Array.isArray(list)) return;
  let first = null;
  for (const f of list) {
    const p = form.querySelector(`#up-${f.field}-error`);
    if (!p) continue;
    p.textContent = f.message;
    p.hidden = false;
    const input = form.querySelector(`[aria-describedby~="up-${f.field}-error"]`);
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      first = first || input;
    }
  }
  if (first) first.focus();
}

const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;

// Sends `file` from `target.offset` to its end; a 409 says where the server stands, and the
// upload goes on from there.
async function send(form, file, target) {
  const bar = form.querySelector('.upload-progress');
  let offset = target.offset;
  if (bar) bar.hidden = false;
  while (offset < target.total) {
    const end = Math.min(offset + CHUNK, target.total);
    const res = await fetch(`/images/${target.image_id}/${target.host_id}/upload?offset=${offset}`, {
      method: 'PUT',
      body: file.slice(offset, end),
      headers: { Accept: 'application/json', 'Content-Type': 'application/octet-stream' },
    });
    const json = await res.json().catch(() => null);
    if (res.status === 409 && json && typeof json.Conflict === 'string') {
      const at = /byte (\d+)/.exec(json.Conflict);
      if (at) { offset = Number(at[1]); continue; }
    }
    if (!res.ok) throw new Refused(json, res.status);
    offset = json.bytes_done;
    const pct = Math.floor((offset * 100) / target.total);
    if (bar) bar.value = pct;
    show(form, `Uploaded ${mib(offset)} of ${mib(target.total)} (${pct}%)`, 'ok');
  }
}

document.addEventListener('submit', async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement)) return;
  const fresh = form.hasAttribute('data-upload');
  const resume = form.hasAttribute('data-resume-upload');
  if (!fresh && !resume) return;
  event.preventDefault();
  const button = form.querySelector('button[type=submit]');
  const file = form.querySelector('input[type=file]').files[0];
  if (!file) return;
  button.disabled = true;
  let target = null;
  let sent = false;
  try {
    if (fresh) {
      const data = new FormData(form);
      target = await call('start_image_upload', {
        name: data.get('name') || '',
        host: data.get('host') || '',
        pool: data.get('pool') || '',
        login_user: data.get('login_user') || '',
        file_name: file.name,
        size: String(file.size),
      });
    } else {
      target = await call('resume_image_upload', { image: form.dataset.image, host: form.dataset.host });
      if (file.size !== target.total) {
        throw new Error(`That file has ${file.size} bytes; the upload is of a file with ${target.total}. Choose the same file.`);
      }
    }
    fieldErrors(form, null);
    sent = true;
    await send(form, file, target);
    sent = false;
    // A refused image is removed whole by the server: nothing to resume then.
    show(form, 'All bytes are on the host: reading the image back (format, SHA-256)…', 'ok');
    await call('finish_image_upload', { image: target.image_id, host: target.host_id });
    show(form, 'Done: the image is ready.', 'ok');
    location.reload();
  } catch (e) {
    if (e instanceof Refused) fieldErrors(form, e.json);
    const bar = form.querySelector('.upload-progress');
    if (bar && !sent) bar.hidden = true;
    // Bytes already on the host stay there: the copy is listed with Resume and Discard.
    const after = sent ? ' What arrived is kept: reload the page to resume or discard the upload.' : '';
    show(form, `${e.message}${after}`, 'error');
    button.disabled = false;
  }
});
