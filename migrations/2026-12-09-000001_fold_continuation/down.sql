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
