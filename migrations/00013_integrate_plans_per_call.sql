-- +goose Up

-- audit_integrate plans its statements that take the call's arguments (the
-- DELETE from the intake among them) at every call, with the intake's size
-- of the moment. A session keeps the generic plan of a PL/pgSQL
-- statement: the sequencer's connection planned the DELETE from the intake
-- while the intake was small (a sequential scan of a few pages is the
-- cheapest there), kept that plan as a backlog grew the heap, and from then
-- on every round read the whole heap, dead rows included, until a vacuum
-- shrank it: 1,300 pages a round of 22 events in the bench's put phase
-- after its audited reads; 695 pages to chain 3 events after a
-- 40,000-event backlog in TestIntegrateSkipsTheIntakeHeap (about 60 planned
-- at each call). Planning costs a round about 0.3 ms (60 events on an idle
-- machine: 1.15 ms a call against 0.83 ms with the cached plans and a small
-- heap), where the kept sequential scan cost one page per heap page.
-- (enable_seqscan = off would force the index too, but its made-up cost
-- pushes the statements past jit_above_cost: every round then compiled
-- them, 50 ms a round.)
ALTER FUNCTION audit_integrate(bigint[], bytea[], bigint, bytea) SET plan_cache_mode = force_custom_plan;

-- +goose Down
ALTER FUNCTION audit_integrate(bigint[], bytea[], bigint, bytea) RESET plan_cache_mode;
