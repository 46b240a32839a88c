-- A record its policy released (the policy was deleted) remembers where that policy lived: only
-- a policy of the same cluster and namespace may claim it again (the policy re-created). Another
-- namespace's policy naming the instance is refused until the receiver's operators hand the
-- record over (`receiver consent release --instance`, which clears this): an instance id alone
-- must not let one customer's namespace take over another's record, its certificates and what
-- it stored.
ALTER TABLE consent_instances
    ADD COLUMN released_cluster   text,
    ADD COLUMN released_namespace text,
    ADD CONSTRAINT consent_instances_released CHECK ((released_cluster IS NULL) = (released_namespace IS NULL));

-- Records released before this migration: where the policy that last recorded a transition
-- lived (every transition keeps its owner). One an administrator released stays tied to it
-- until released again.
UPDATE consent_instances ci
SET released_cluster = last.owner_cluster, released_namespace = last.owner_namespace
FROM (SELECT DISTINCT ON (instance_id) instance_id, owner_cluster, owner_namespace
      FROM consent_transitions ORDER BY instance_id, seq DESC) last
WHERE ci.instance_id = last.instance_id AND ci.owner_cluster IS NULL;
