// Validates the AsyncAPI document of the service's topics (schemas/asyncapi.json, the path
// given) with the AsyncAPI Initiative's own parser (npm @asyncapi/parser), which checks it
// against the AsyncAPI 3.0 specification and resolves every $ref to the checked-in JSON
// Schemas. Prints one JSON line: errors (with their messages), and what resolved.
import { Parser, fromFile } from '@asyncapi/parser';

const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, process.argv[2]).parse();
const errors = diagnostics
  .filter((d) => d.severity === 0)
  .map((d) => `${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
const seen = { errors, channels: 0, messages: 0, payloads: 0, opened: 0, headers: 0 };
if (document) {
  seen.channels = document.channels().length;
  for (const message of document.allMessages()) {
    seen.messages += 1;
    const payload = message.payload()?.json();
    if (payload?.type === 'object' && payload.properties) seen.payloads += 1;
    if (message.extensions().get('x-opened-payload')?.value()?.properties) seen.opened += 1;
    if (message.headers()?.json()?.properties?.ce_id) seen.headers += 1;
  }
}
console.log(JSON.stringify(seen));
