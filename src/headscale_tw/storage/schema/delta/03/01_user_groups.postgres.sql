-- Schema version 3: the groups an OpenID provider sent at a user's last sign-in.
-- A JSON list of strings, replaced at each sign-in, bounded by the sign-in code
-- (oidc/claims.py: at most MAX_GROUPS names of at most MAX_GROUP_NAME characters).
-- The policy names them as idpgroup:<name>; users not created by a sign-in keep '[]'.

ALTER TABLE users ADD COLUMN idp_groups TEXT NOT NULL DEFAULT '[]';
