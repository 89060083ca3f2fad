CREATE INDEX position_vault ON position (term_id, curve_id, account_id);
