// The portal's error, as its server functions send it (AppError as JSON), in words: shared by
// the pages' small scripts (console, image uploads).
const plain = { Unauthenticated: 'Please sign in.', Forbidden: 'You are not allowed to do that.' };

export function errorWords(json, fallback) {
  if (typeof json === 'string') return plain[json] || json;
  if (json && typeof json === 'object') {
    const [kind, value] = Object.entries(json)[0] || [];
    if (kind === 'NotFound') return `${value} not found.`;
    if (kind === 'Invalid' && Array.isArray(value)) return value.map((f) => f.message).join(' ');
    if (typeof value === 'string') return value;
  }
  return fallback;
}
