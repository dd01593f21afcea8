// A schema of operators and a type named like pg_catalog's, each of which
// raises, for tests of code that runs with a caller's search_path.
#pragma once

namespace datatunnel::testing {

// Operators and a type named like pg_catalog's, in a schema the writer puts
// first in its search_path: each raises. The capture functions are SECURITY
// DEFINER (they run as their owner), so an operator or type they left
// unqualified would run the writer's code as that owner.
inline constexpr const char* kHostileSchema = R"sql(
CREATE SCHEMA hostile;
DO $$
DECLARE t text; op text; i int := 0;
BEGIN
  FOREACH t IN ARRAY ARRAY['integer', 'bigint', 'text', 'oid', 'boolean', 'smallint',
                           'integer[]', 'name', '"char"', 'character varying'] LOOP
    i := i + 1;
    EXECUTE format('CREATE FUNCTION hostile.cmp%s(%s, %s) RETURNS boolean LANGUAGE plpgsql AS '
                   '$f$ BEGIN RAISE EXCEPTION ''hostile operator ran as %%'', current_user; END $f$',
                   i, t, t);
    FOREACH op IN ARRAY ARRAY['=', '<>', '>', '<'] LOOP
      EXECUTE format('CREATE OPERATOR hostile.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = hostile.cmp%s)',
                     op, t, t, i);
    END LOOP;
  END LOOP;
END $$;
CREATE FUNCTION hostile.ii(integer, integer) RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hostile arithmetic'; END $$;
CREATE FUNCTION hostile.bi(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hostile arithmetic'; END $$;
CREATE FUNCTION hostile.bb(bigint, integer) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hostile comparison'; END $$;
CREATE FUNCTION hostile.sb(smallint, integer) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hostile comparison'; END $$;
CREATE FUNCTION hostile.tt(text, text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hostile concatenation'; END $$;
CREATE OPERATOR hostile.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = hostile.ii);
CREATE OPERATOR hostile.- (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = hostile.bi);
CREATE OPERATOR hostile./ (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = hostile.bi);
CREATE OPERATOR hostile.= (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = hostile.bb);
CREATE OPERATOR hostile.> (LEFTARG = smallint, RIGHTARG = integer, FUNCTION = hostile.sb);
CREATE OPERATOR hostile.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = hostile.tt);
CREATE TYPE hostile.text AS ENUM ('hostile');
CREATE TABLE other (id int);
)sql";

}  // namespace datatunnel::testing
