// A FHIR client library from the npm registry (fhir-kit-client) working against the service:
// searches and pages patients, reads one, creates an AllergyIntolerance, updates it with
// If-Match (and is refused when stale), and records an observation and a condition in one
// transaction Bundle. Arguments: base URL, a registrar's bearer token (to
// search), a clinician's (to write), the family name to search, and the id of a patient in the
// clinician's care. Prints what it saw as one JSON object.
import { Client } from 'fhir-kit-client';

const [baseUrl, searchToken, writeToken, family, patientId] = process.argv.slice(2);
const registrar = new Client({ baseUrl, bearerToken: searchToken });
const client = new Client({ baseUrl, bearerToken: writeToken });
const seen = {};

const first = await registrar.search({ resourceType: 'Patient', searchParams: { family, _count: 2 } });
const second = await registrar.nextPage({ bundle: first });
seen.pages = [first, second].map((b) => b.entry.map((e) => e.resource.id));
seen.totals = [first.total, second.total];
seen.read = (await client.read({ resourceType: 'Patient', id: patientId })).id;

const created = await client.create({
  resourceType: 'AllergyIntolerance',
  body: {
    resourceType: 'AllergyIntolerance',
    clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical', code: 'active' }] },
    code: { coding: [{ system: 'http://snomed.info/sct', code: '91935009', display: 'Allergy to peanut' }] },
    patient: { reference: `Patient/${patientId}` },
  },
});
seen.created = { id: created.id, version: created.meta.versionId };

const updated = await client.update({
  resourceType: 'AllergyIntolerance',
  id: created.id,
  body: { ...created, criticality: 'high' },
  options: { headers: { 'If-Match': `W/"${created.meta.versionId}"` } },
});
seen.updated = { version: updated.meta.versionId, criticality: updated.criticality };

try {
  await client.update({
    resourceType: 'AllergyIntolerance',
    id: created.id,
    body: { ...created, criticality: 'low' },
    options: { headers: { 'If-Match': 'W/"1"' } },
  });
  seen.stale = 'accepted';
} catch (e) {
  seen.stale = e.response?.status ?? String(e);
  seen.staleOutcome = e.response?.data?.resourceType;
}
const subject = { reference: `Patient/${patientId}` };
const transaction = await client.transaction({
  body: {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: [
      {
        fullUrl: 'urn:uuid:7f3c2a52-0d8e-4b8a-9c57-2f0b6f1f2d11',
        resource: {
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '8310-5', display: 'Body temperature' }] },
          subject,
          effectiveDateTime: '2026-11-26T10:00:00Z',
          valueQuantity: { value: 37.9, unit: 'Cel', system: 'http://unitsofmeasure.org', code: 'Cel' },
        },
        request: { method: 'POST', url: 'Observation' },
      },
      {
        resource: {
          resourceType: 'Condition',
          clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
          code: { coding: [{ system: 'http://snomed.info/sct', code: '386661006', display: 'Fever' }] },
          subject,
        },
        request: { method: 'POST', url: 'Condition' },
      },
    ],
  },
});
seen.transaction = {
  type: transaction.type,
  statuses: transaction.entry.map((e) => e.response.status),
  types: transaction.entry.map((e) => e.resource.resourceType),
};
console.log(JSON.stringify(seen));
