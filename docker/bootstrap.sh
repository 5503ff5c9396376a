#!/bin/sh
# First-run set-up of a compose deployment, safe to run on every `docker compose up`:
#   1. an empty store gets MovieLens-100K (fetched with its checksum, then imported);
#      a store that already holds ratings is left alone, so ratings given through the API are
#      never overwritten by a re-import;
#   2. a first model is trained and activated unless a model version already exists.
# BOOTSTRAP_DATA=0 turns the whole step off (bring your own data with `movierec data import`).
set -eu

if [ "${BOOTSTRAP_DATA:-1}" = "0" ]; then
    echo "bootstrap: BOOTSTRAP_DATA=0, nothing to do"
    exit 0
fi

dataset_dir="${MOVIEREC_DATA_DIR:-/var/lib/movierec/data}/ml-100k"

# Exit status 0 when the configured store holds no rating yet.
store_is_empty() {
    python - <<'PY'
import sys

from sqlalchemy import select

from app.config import get_settings
from app.db.models import Rating
from app.db.session import session_scope

with session_scope(get_settings().database_url) as session:
    has_rating = session.scalars(select(Rating.user_id).limit(1)).first() is not None
sys.exit(1 if has_rating else 0)
PY
}

if store_is_empty; then
    echo "bootstrap: empty store, loading MovieLens-100K"
    movierec data fetch movielens-100k --dest "$dataset_dir"
    movierec data import --no-progress "$dataset_dir"
else
    echo "bootstrap: the store already holds ratings, import skipped"
fi

movierec train --if-no-model
echo "bootstrap: done"
