// A SMART on FHIR app from the npm registry (fhirclient) launched against the service, with a
// token issuer from the registry (oauth2-mock-server) as the identity provider.
//
// The test and this script talk over stdin and stdout, one JSON object a line:
// 1. this script starts the issuer and prints { issuer }: its key set is `${issuer}/jwks`, its
//    endpoints `${issuer}/authorize` and `${issuer}/token`. The test starts the service trusting
//    that key set and issuer, and takes tokens for its own set-up from the token endpoint with
//    the client_credentials grant and the form fields `sub` and `roles` (comma-separated).
// 2. the test sends { base, patient, other, user, roles, audience, scope }: the FHIR base URL,
//    the patient to launch on, another patient, and who the app's user is.
// 3. this script runs a standalone launch as a browser would (the app's /launch redirects to
//    the service's SMART discovery and on to the issuer's /authorize, which redirects back to
//    the app's /callback with a code that fhirclient exchanges for a token), makes the app's
//    requests through fhirclient, prints what it saw, and exits.
import http from 'node:http';
import readline from 'node:readline';
import { OAuth2Server } from 'oauth2-mock-server';
import smart from 'fhirclient';

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

const issuer = new OAuth2Server();
await issuer.issuer.keys.generate('RS256');
await issuer.start(0, '127.0.0.1');
const issuerUrl = issuer.issuer.url;
let ask = {};
issuer.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  if (body.grant_type === 'client_credentials') {
    token.payload.sub = body.sub;
    token.payload.roles = String(body.roles ?? '').split(',').filter(Boolean);
  } else {
    token.payload.sub = ask.user;
    token.payload.roles = ask.roles;
    token.payload.scope = ask.scope;
    token.payload.patient = ask.patient;
  }
  token.payload.aud = ask.audience ?? body.audience;
});
issuer.service.on('beforeResponse', (response, req) => {
  if (req.body?.grant_type === 'authorization_code' && response.body?.access_token) {
    // The launch context and the scopes granted, as a SMART token response carries them.
    response.body.patient = ask.patient;
    response.body.scope = ask.scope;
  }
});
console.log(JSON.stringify({ issuer: issuerUrl }));

ask = JSON.parse(await nextLine());

const saved = new Map();
const storage = {
  get: async (key) => saved.get(key),
  set: async (key, value) => {
    saved.set(key, value);
    return value;
  },
  unset: async (key) => saved.delete(key),
};

const statusOf = async (request) => {
  try {
    await request;
    return 200;
  } catch (e) {
    return e.status ?? e.statusCode ?? String(e);
  }
};

async function exercise(client) {
  const seen = { patient: client.patient.id };
  seen.read = (await client.patient.read()).id;
  const allergies = await client.request(`AllergyIntolerance?patient=${client.patient.id}`);
  seen.allergies = allergies.total;
  seen.allergyPatients = [...new Set(allergies.entry.map((e) => e.resource.patient.reference))];
  const everything = await client.request(`Patient/${client.patient.id}/$everything`);
  seen.everythingTypes = [...new Set(everything.entry.map((e) => e.resource.resourceType))].sort();
  seen.other = await statusOf(client.request(`Patient/${ask.other}`));
  seen.conditions = await statusOf(client.request(`Condition?patient=${client.patient.id}`));
  seen.create = await statusOf(
    client.create({
      resourceType: 'AllergyIntolerance',
      code: { text: 'Peanut' },
      patient: { reference: `Patient/${client.patient.id}` },
    }),
  );
  return seen;
}

let seen;
const app = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://app.invalid');
  try {
    if (url.pathname === '/launch') {
      await smart(req, res, storage).authorize({
        clientId: 'patient-service-smart-test',
        scope: ask.scope,
        redirectUri: '/callback',
        iss: ask.base,
      });
    } else if (url.pathname === '/callback') {
      const client = await smart(req, res, storage).ready();
      seen = await exercise(client);
      res.end('done');
    } else {
      res.writeHead(404);
      res.end();
    }
  } catch (e) {
    res.writeHead(500);
    res.end(String(e?.stack ?? e));
  }
});
await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));

// The browser: follows redirects, from the app's launch to its callback.
let location = `http://127.0.0.1:${app.address().port}/launch`;
const visited = [];
while (location) {
  visited.push(new URL(location).pathname);
  const response = await fetch(location, { redirect: 'manual' });
  if (response.status >= 300 && response.status < 400) {
    location = new URL(response.headers.get('location'), location).href;
  } else if (response.status === 200) {
    location = null;
  } else {
    throw new Error(`${location} answered ${response.status}: ${await response.text()}`);
  }
  if (visited.length > 10) {
    throw new Error(`too many redirects: ${visited.join(' ')}`);
  }
}
console.log(JSON.stringify({ visited, seen }));
app.close();
await issuer.stop();
process.exit(0);
