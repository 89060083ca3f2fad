DROP INDEX position_vault;
CREATE INDEX position_term ON position (term_id, curve_id);
DROP INDEX triple_created_events_term;
DROP INDEX atom_created_events_term;
DROP INDEX share_price_changed_events_vault;
DROP INDEX redeemed_events_vault;
DROP INDEX deposited_events_vault;
DROP INDEX redeemed_events_position;
DROP INDEX deposited_events_position;
DROP TABLE fold_upgrade;
ALTER TABLE term DROP COLUMN is_atom, DROP COLUMN is_triple, DROP COLUMN counter_of;
ALTER TABLE vault
    DROP COLUMN price_block_number, DROP COLUMN price_log_index, DROP COLUMN price_transaction_hash,
    DROP COLUMN type_block_number, DROP COLUMN type_log_index, DROP COLUMN type_transaction_hash;
ALTER TABLE position
    DROP COLUMN first_block_number, DROP COLUMN first_log_index, DROP COLUMN first_transaction_hash,
    DROP COLUMN last_block_number, DROP COLUMN last_log_index, DROP COLUMN last_transaction_hash;
DROP INDEX atom_created_events_block;
DROP INDEX triple_created_events_block;
DROP INDEX deposited_events_block;
DROP INDEX redeemed_events_block;
DROP INDEX share_price_changed_events_block;
DROP INDEX generic_events_block;
CREATE INDEX atom_created_events_block ON atom_created_events USING brin (block_number);
CREATE INDEX triple_created_events_block ON triple_created_events USING brin (block_number);
CREATE INDEX deposited_events_block ON deposited_events USING brin (block_number);
CREATE INDEX redeemed_events_block ON redeemed_events USING brin (block_number);
CREATE INDEX share_price_changed_events_block ON share_price_changed_events USING brin (block_number);
CREATE INDEX generic_events_block ON generic_events USING brin (block_number);
