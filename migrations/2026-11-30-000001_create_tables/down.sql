DROP TABLE term_update_outbox, sync_progress,
    subject_predicate, predicate_object, triple_term, triple_vault,
    term, vault, position, triple, atom,
    generic_events, share_price_changed_events, redeemed_events, deposited_events,
    triple_created_events, atom_created_events;
