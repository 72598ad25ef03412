-- jobs_step (run_id, step_id) serves every lookup by run as well: one index less to maintain on
-- the busiest table (PostgreSQL dropped it in 0002).
DROP INDEX jobs_run;
