-- Pair aggregates keep their market cap twice: `total_market_cap`, the value SPEC §2 shows,
-- saturated at 2^256-1 (src/domain/math.rs), and `total_market_cap_sum`, the exact sum of the
-- pair's triple_term market caps in 512 bits (at most 2^512-1: 155 digits). The analytics
-- consumer loads the exact sum, moves triples in and out of it, and writes both, so removing a
-- triple after a saturation stays exact; replay and verify write and compare it too.
-- Tables and columns only.
ALTER TABLE predicate_object ADD COLUMN total_market_cap_sum NUMERIC(155,0) NOT NULL DEFAULT 0;
ALTER TABLE subject_predicate ADD COLUMN total_market_cap_sum NUMERIC(155,0) NOT NULL DEFAULT 0;

-- Backfill. Below 2^256-1 the stored value is the exact sum. Above it (written by the old
-- live path, which added exact deltas in SQL) it is exact too, and only its shown value must be
-- saturated. At exactly 2^256-1 it may have been saturated by a rebuild: the exact sum is taken
-- again from the triple_term rows of the pair's triples (written in the same transactions as
-- the pair rows).
UPDATE predicate_object SET total_market_cap_sum = total_market_cap;
UPDATE subject_predicate SET total_market_cap_sum = total_market_cap;

UPDATE predicate_object p SET total_market_cap_sum = s.exact
FROM (
    SELECT t.predicate_id, t.object_id, sum(tt.total_market_cap) AS exact
    FROM triple t JOIN triple_term tt ON tt.term_id = t.term_id
    GROUP BY t.predicate_id, t.object_id
) s
WHERE p.total_market_cap = 115792089237316195423570985008687907853269984665640564039457584007913129639935
  AND s.predicate_id = p.predicate_id AND s.object_id = p.object_id;

UPDATE subject_predicate p SET total_market_cap_sum = s.exact
FROM (
    SELECT t.subject_id, t.predicate_id, sum(tt.total_market_cap) AS exact
    FROM triple t JOIN triple_term tt ON tt.term_id = t.term_id
    GROUP BY t.subject_id, t.predicate_id
) s
WHERE p.total_market_cap = 115792089237316195423570985008687907853269984665640564039457584007913129639935
  AND s.subject_id = p.subject_id AND s.predicate_id = p.predicate_id;

UPDATE predicate_object
SET total_market_cap = 115792089237316195423570985008687907853269984665640564039457584007913129639935
WHERE total_market_cap > 115792089237316195423570985008687907853269984665640564039457584007913129639935;
UPDATE subject_predicate
SET total_market_cap = 115792089237316195423570985008687907853269984665640564039457584007913129639935
WHERE total_market_cap > 115792089237316195423570985008687907853269984665640564039457584007913129639935;
