ALTER TABLE subject_predicate DROP COLUMN total_market_cap_sum;
ALTER TABLE predicate_object DROP COLUMN total_market_cap_sum;
