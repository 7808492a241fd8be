"""One process (or "host") of the spending-cap tests (tests/test_spend.py).

``python -m tests._spend_worker spend START MAX_CALLS``: from wall-clock START, uncached
staging calls until the cap refuses one (or MAX_CALLS); prints what was sent and refused.
``python -m tests._spend_worker ask PROMPT``: one staging call; prints when it was sent back.
Settings, cache root and HOME come from the environment the test gives.
"""

from __future__ import annotations

import json
import sys
import time

from mistral_nbenv import BudgetExceededError, get_client

MESSAGES = [{"role": "user", "content": "count the cost"}]


def main() -> None:
    mode = sys.argv[1]
    client = get_client("staging")
    if mode == "ask":
        started = time.time()
        client.chat.complete(messages=[{"role": "user", "content": sys.argv[2]}], cache=False)
        print(json.dumps({"started": started, "done": time.time(), **client.stats.as_dict()}))
        client.close()
        return
    start, most = float(sys.argv[2]), int(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))
    sent, refused, error = 0, 0, {}
    for _ in range(most):
        try:
            client.chat.complete(messages=MESSAGES, max_tokens=20, cache=False)
        except BudgetExceededError as exc:
            refused += 1
            error = {"cap": exc.cap, "limit": exc.limit, "spent": exc.spent, "text": str(exc)}
            break
        sent += 1
    print(
        json.dumps(
            {"sent": sent, "refused": refused, "error": error, "cost": client.stats.cost_usd}
        )
    )
    client.close()


if __name__ == "__main__":
    main()
