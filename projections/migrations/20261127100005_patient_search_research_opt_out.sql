-- The consent directive that opts the patient out of research, while it is in force: research
-- searches leave such patients out.
ALTER TABLE projections.patient_search ADD COLUMN research_opt_out uuid;
