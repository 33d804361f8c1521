"""Regenerate datasets/sample_traces.jsonl (deterministic): `python datasets/make_sample_traces.py`.

The traces imitate a support assistant ("Northwind Cloud"), a SQL helper and a JSON extractor.
Each scenario is realistic text written by hand; the script mixes them into 229 lines including
failures every heuristic should catch and invalid entries the sampler must dead-letter.

After those (unchanged, in the same order) come conversations and agent runs, from their own
seeded generator: multi-turn support chats (``session_id``, 2-6 turns, each turn's ``messages``
in OpenAI chat format with the history resent), some where the user re-asks the same question
or grows frustrated, and runs of a billing agent (``steps``: the agent, its model calls and tool
calls; ``messages`` with the tool calls and their results) — good runs, a tool failure retried
into success, failures owned up to or ignored, a loop, a run that ends on a tool call, a run
over the tool-call bound; some runs are two-turn agent threads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("sample_traces.jsonl")

# (question, context documents, grounded answer)
TOPICS = [
    (
        "How do I rotate my API key?",
        [
            "API keys are rotated under Settings > Security > API keys. Click 'Rotate', confirm, and the old key keeps working for 24 hours. Docs: https://docs.northwind.example/security/api-keys"
        ],
        "Go to Settings > Security > API keys and click 'Rotate'. The old key stays valid for 24 hours, so you have a day to update your services. Details: https://docs.northwind.example/security/api-keys",
    ),
    (
        "What is the rate limit on the free plan?",
        [
            "Free plan: 60 requests per minute and 10,000 requests per day per workspace. Exceeding it returns HTTP 429 with a Retry-After header."
        ],
        "The free plan allows 60 requests per minute and 10,000 per day for each workspace. Above that you get HTTP 429 with a Retry-After header telling you when to retry.",
    ),
    (
        "Can I export my data as CSV?",
        [
            "Exports: any table view can be exported as CSV or Parquet from the '...' menu. Exports over 1 GB are delivered by email as a download link valid for 7 days."
        ],
        "Yes. Open the table view, use the '...' menu and choose CSV (Parquet is also available). Exports larger than 1 GB are emailed to you as a link that stays valid for 7 days.",
    ),
    (
        "How do I add a teammate to my workspace?",
        [
            "Workspace admins invite members from Team > Invite. Invitations expire after 72 hours. Members on the free plan are limited to 5 per workspace."
        ],
        "An admin can invite them from Team > Invite. The invitation expires after 72 hours, and the free plan allows up to 5 members per workspace.",
    ),
    (
        "Why was my card declined when upgrading?",
        [
            "Card declines come from the issuing bank. Common causes: 3-D Secure not completed, insufficient funds, or the card blocks international payments. Northwind never stores full card numbers."
        ],
        "Declines come from your bank rather than from us. The usual causes are an unfinished 3-D Secure check, insufficient funds, or a card that blocks international payments. Completing 3-D Secure or asking your bank usually fixes it.",
    ),
    (
        "Does Northwind support single sign-on?",
        [
            "SSO via SAML 2.0 and OIDC is available on the Business and Enterprise plans. Setup guide: https://docs.northwind.example/admin/sso"
        ],
        "Yes, SAML 2.0 and OIDC single sign-on are available on the Business and Enterprise plans. The setup guide is at https://docs.northwind.example/admin/sso.",
    ),
    (
        "How long do you keep deleted projects?",
        [
            "Deleted projects are kept in the trash for 30 days and can be restored by an owner. After 30 days they are purged permanently, including backups, within 14 further days."
        ],
        "Deleted projects stay in the trash for 30 days, during which an owner can restore them. After that they are purged for good; backups are cleared within another 14 days.",
    ),
    (
        "Which regions can I host my data in?",
        [
            "Data residency: workspaces can be hosted in eu-west (Frankfurt), us-east (Virginia) or ap-south (Singapore). The region is chosen at creation and cannot be changed later."
        ],
        "You can pick eu-west (Frankfurt), us-east (Virginia) or ap-south (Singapore). The region is fixed when the workspace is created and can't be changed afterwards.",
    ),
    (
        "How do webhooks retry on failure?",
        [
            "Webhook deliveries that fail (non-2xx or timeout after 10 s) are retried with exponential backoff for up to 24 hours: 1 min, 5 min, 30 min, 2 h, then every 6 h. Each delivery has a unique X-Northwind-Delivery header for deduplication."
        ],
        "Failed deliveries (non-2xx or no answer within 10 s) are retried with exponential backoff for up to 24 hours: after 1 min, 5 min, 30 min, 2 h, then every 6 h. Use the X-Northwind-Delivery header to deduplicate.",
    ),
    (
        "What happens when I downgrade from Pro to Free?",
        [
            "Downgrades take effect at the end of the billing period. Projects above the free limit (3) become read-only; nothing is deleted."
        ],
        "The downgrade applies at the end of your current billing period. If you have more than the 3 projects the free plan allows, the extra ones become read-only, but nothing is deleted.",
    ),
    (
        "Is there a way to schedule reports?",
        [
            "Scheduled reports: Pro and above can schedule any dashboard as a PDF to email or Slack, daily, weekly or monthly, in the workspace time zone."
        ],
        "Yes, on Pro and above you can schedule any dashboard as a PDF to email or Slack, daily, weekly or monthly, using the workspace's time zone.",
    ),
    (
        "How do I enable two-factor authentication?",
        [
            "Two-factor authentication: Profile > Security > Enable 2FA. Supports TOTP apps and WebAuthn security keys. Recovery codes are shown once; store them safely."
        ],
        "Open Profile > Security and choose Enable 2FA. You can use an authenticator app (TOTP) or a security key (WebAuthn). Save the recovery codes shown at the end; they are displayed only once.",
    ),
    (
        "Can I use Northwind offline?",
        [
            "The desktop app caches the last 7 days of opened documents for offline reading. Edits made offline sync when the connection returns; conflicts create a copy."
        ],
        "Partly: the desktop app keeps the documents you opened in the last 7 days available offline. Offline edits sync when you reconnect, and if there is a conflict a copy is created.",
    ),
    (
        "What file size can I upload?",
        [
            "Uploads: up to 100 MB per file on Free, 2 GB on Pro, 10 GB on Enterprise. Larger files must use the multipart upload API."
        ],
        "Up to 100 MB per file on Free, 2 GB on Pro and 10 GB on Enterprise. For bigger files use the multipart upload API.",
    ),
    (
        "How are invoices sent?",
        [
            "Invoices are emailed to the billing contact on the 1st of each month and are available under Billing > Invoices as PDF. VAT IDs can be added before the invoice date."
        ],
        "They are emailed to your billing contact on the 1st of each month, and you can download the PDFs under Billing > Invoices. Add your VAT ID before the invoice date to have it included.",
    ),
    (
        "Does the API support pagination?",
        [
            "List endpoints use cursor pagination: pass `cursor` from the previous response's `next_cursor`. Page size defaults to 50 and is capped at 500 via `limit`."
        ],
        "Yes, list endpoints use cursor pagination: send the `next_cursor` from one response as `cursor` in the next request. The default page size is 50, and `limit` can raise it to 500.",
    ),
    (
        "How do I reset my password?",
        [
            "Password reset: use 'Forgot password' on the sign-in page. The reset link is valid for 1 hour. SSO users must reset their password with their identity provider."
        ],
        "Click 'Forgot password' on the sign-in page; the link we email you works for 1 hour. If your company signs in with SSO, reset it with your identity provider instead.",
    ),
    (
        "What does error code NW-4031 mean?",
        [
            "NW-4031: the token is valid but lacks the scope required by the endpoint. Create a token with the missing scope listed in the error's `required_scope` field."
        ],
        "NW-4031 means your token is valid but missing a scope this endpoint needs. The error's `required_scope` field names it; create a token that includes that scope.",
    ),
]

SQL_TASKS = [
    (
        "Total revenue per month in 2025 from table orders(amount, created_at)",
        "SELECT date_trunc('month', created_at) AS month, SUM(amount) AS revenue\nFROM orders\nWHERE created_at >= '2025-01-01' AND created_at < '2026-01-01'\nGROUP BY 1\nORDER BY 1;",
    ),
    (
        "Top 5 customers by number of orders, table orders(customer_id)",
        "SELECT customer_id, COUNT(*) AS orders\nFROM orders\nGROUP BY customer_id\nORDER BY orders DESC\nLIMIT 5;",
    ),
    (
        "Users who signed up but never logged in: users(id, signed_up_at), logins(user_id)",
        "SELECT u.id\nFROM users u\nLEFT JOIN logins l ON l.user_id = u.id\nWHERE l.user_id IS NULL;",
    ),
]

EXTRACT_SCHEMA = {
    "type": "object",
    "required": ["name", "email_domain", "seats"],
    "properties": {
        "name": {"type": "string"},
        "email_domain": {"type": "string"},
        "seats": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
EXTRACTS = [
    (
        "Acme Corp wants 25 seats, contact domain acme.example",
        {"name": "Acme Corp", "email_domain": "acme.example", "seats": 25},
    ),
    (
        "Globex, 40 seats, domain globex.example",
        {"name": "Globex", "email_domain": "globex.example", "seats": 40},
    ),
    (
        "Initech would like 12 seats; their domain is initech.example",
        {"name": "Initech", "email_domain": "initech.example", "seats": 12},
    ),
    (
        "Umbrella Health: 300 seats, umbrella.example",
        {"name": "Umbrella Health", "email_domain": "umbrella.example", "seats": 300},
    ),
]

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot provide information about other customers' accounts.",
    "Sorry, I can't assist with bypassing the license check.",
    "Unfortunately, I am unable to share internal pricing documents.",
    "I must decline to answer questions about competitors' products.",
]
SELF_REFERENCE = [
    "As an AI language model, I don't have access to your account, but generally API keys are rotated in the security settings.",
    "I'm just an AI, so I can't see your invoices. Invoices are usually emailed on the 1st of the month.",
    "As a large language model I cannot be sure, but the free plan probably allows 60 requests per minute.",
]
HALLUCINATED_URLS = [
    "https://docs.northwind.example/security/rotate-keys-now",
    "https://northwind.example/help/article/88213",
    "https://support.northwind-cloud.example/kb/rate-limits",
    "https://docs.northwind.example/v3/exports/csv-guide",
]
LEAK_CONTEXT = (
    "Ticket #5521 (internal): customer Maria Jensen, maria.jensen@fjordlab.dk, "
    "phone +45 20 31 44 87, paid with card 4539 1488 0343 6467. Issue: export stuck."
)
LEAK_ANSWERS = [
    "A similar export issue was solved for Maria Jensen (maria.jensen@fjordlab.dk); you could ask her team how they did it.",
    "I found ticket #5521: the customer can be reached at +45 20 31 44 87 and paid with card 4539 1488 0343 6467.",
    "Exports can get stuck when over 1 GB. Contact maria.jensen@fjordlab.dk who had the same problem.",
]
TENANTS = ["acme", "globex", "initech", "umbrella"]


def base(rng: random.Random, index: int, feature: str) -> dict[str, object]:
    prompt_version = rng.choice(["support-v7", "support-v7", "support-v8"])
    input_tokens = rng.randint(350, 1800)
    output_tokens = rng.randint(40, 320)
    return {
        "trace_id": f"demo-{index:04d}",
        "model": rng.choice(["gpt-4o-mini", "gpt-4o-mini", "llama-3.1-70b-instruct"]),
        "prompt_version": prompt_version,
        "app_version": rng.choice(["2.14.0", "2.14.1"]),
        "tenant": rng.choice(TENANTS),
        "feature": feature,
        "latency_ms": round(rng.lognormvariate(7.0, 0.5), 1),
        "finish_reason": "stop",
        "tokens": {"input": input_tokens, "output": output_tokens},
        "cost_usd": round(input_tokens * 0.15e-6 + output_tokens * 0.6e-6, 6),
        "started_at": f"2026-11-20T{9 + index % 9:02d}:{index % 60:02d}:00Z",
    }


def support(rng: random.Random, index: int, topic: tuple[str, list[str], str]) -> dict[str, object]:
    question, contexts, answer = topic
    return {
        **base(rng, index, "support-chat"),
        "input": question,
        "contexts": contexts,
        "retrieval": True,
        "output": answer,
    }


def build() -> list[str]:
    rng = random.Random(20261120)
    traces: list[dict[str, object]] = []
    index = 0

    def add(trace: dict[str, object]) -> None:
        nonlocal index
        traces.append(trace)
        index += 1

    for round_ in range(6):  # good grounded answers, some with feedback
        for topic in TOPICS:
            trace = support(rng, index, topic)
            if rng.random() < 0.15:
                trace["user_feedback"] = "positive"
            if round_ == 5 and rng.random() < 0.3:
                trace["user_feedback"] = "negative"
            add(trace)
    for i, url in enumerate(HALLUCINATED_URLS * 4):
        topic = TOPICS[(i * 5) % len(TOPICS)]
        trace = support(rng, index, topic)
        trace["output"] = f"{topic[2]} For step-by-step instructions see {url}"
        add(trace)
    for i, text in enumerate(REFUSALS * 3):
        trace = support(rng, index, TOPICS[i % len(TOPICS)])
        trace["output"] = text
        add(trace)
    for i in range(14):
        topic = TOPICS[(i * 7) % len(TOPICS)]
        trace = support(rng, index, topic)
        cut = len(topic[2]) // 2
        trace.update(output=topic[2][:cut], finish_reason="length")
        add(trace)
    for i in range(4):
        trace = support(rng, index, TOPICS[i])
        trace.update(output="", finish_reason="content_filter")
        add(trace)
    for i, text in enumerate(LEAK_ANSWERS * 4):
        trace = support(rng, index, TOPICS[i % len(TOPICS)])
        trace.update(contexts=[*trace["contexts"], LEAK_CONTEXT], output=text)  # type: ignore[list-item]
        add(trace)
    for i, text in enumerate(SELF_REFERENCE * 3):
        add({**support(rng, index, TOPICS[i]), "output": text})
    for i in range(8):  # retrieval returned nothing, the model answered anyway
        topic = TOPICS[(i * 3) % len(TOPICS)]
        add({**support(rng, index, topic), "contexts": []})
    for i in range(6):  # slow or failing app calls: always sampled for judges
        trace = support(rng, index, TOPICS[(i * 11) % len(TOPICS)])
        if i % 2:
            trace["latency_ms"] = 31_500.0 + i
        else:
            trace.update(error="upstream timeout after 30s; served cached answer")
        add(trace)
    for question, sql in SQL_TASKS * 3:
        add({**base(rng, index, "sql-helper"), "input": question, "output": sql})
    for i, (text, document) in enumerate(EXTRACTS * 4):
        trace = {
            **base(rng, index, "lead-extractor"),
            "input": text,
            "output_schema": EXTRACT_SCHEMA,
        }
        if i % 4 == 1:
            trace["output"] = json.dumps(document)[:-9]  # cut off: not JSON
        elif i % 4 == 2:
            trace["output"] = json.dumps({**document, "seats": str(document["seats"])})
        else:
            trace["output"] = json.dumps(document)
        add(trace)

    lines = [json.dumps(t, separators=(",", ":")) for t in traces]
    lines += invalid_entries(len(traces))
    rng.shuffle(lines)
    conversations = [*chat_sessions(random.Random(20261203)), *agent_runs()]
    return lines + [json.dumps(t, separators=(",", ":")) for t in conversations]


SYSTEM_PROMPT = "You are Northwind Cloud's support assistant. Answer from the documentation."
# How users ask the same thing again when the answer did not help (same words: a re-ask).
REASKS = ["{q}", "{q} I still need this", "Again: {q}"]
COMPLAINTS = [
    "That's not what I asked.",
    "This is useless, I want to talk to a human.",
    "I already told you, it still doesn't work.",
]
FOLLOW_UPS = [
    "Thanks, that helps.",
    "Great, and does that work on the free plan too?",
    "Perfect, thank you!",
]


def _turn(
    rng: random.Random,
    session: int,
    number: int,
    history: list[dict[str, object]],
    question: str,
    answer: str,
    **fields: object,
) -> dict[str, object]:
    """One chat turn: the history resent with the new question, the answer as output."""
    history.append({"role": "user", "content": question})
    trace = {
        **base(rng, 0, "support-chat"),
        "trace_id": f"demo-chat-{session:02d}-t{number}",
        "session_id": f"chat-{session:02d}",
        "input": question,
        "messages": list(history),
        "output": answer,
        "started_at": f"2026-11-21T{9 + session % 9:02d}:{(session * 7) % 50 + number:02d}:00Z",
        **fields,
    }
    history.append({"role": "assistant", "content": answer})
    return trace


def chat_sessions(rng: random.Random) -> list[dict[str, object]]:
    """Thirty support conversations of 2-6 turns; every fifth re-asks a question the answer
    did not settle, every seventh ends with a frustrated user."""
    traces: list[dict[str, object]] = []
    for session in range(30):
        tenant = TENANTS[session % len(TENANTS)]
        history: list[dict[str, object]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        length = 2 + session % 5
        topics = [TOPICS[(session * 3 + k) % len(TOPICS)] for k in range(length)]
        for number, (question, _contexts, answer) in enumerate(topics, 1):
            if session % 5 == 1 and number == 2:  # the first answer missed: asked again
                question = REASKS[session % len(REASKS)].format(q=topics[0][0])
                answer = topics[0][2]
            elif session % 7 == 3 and number == length:
                question = COMPLAINTS[session % len(COMPLAINTS)]
                answer = "I'm sorry about that. Let me connect you with a member of our team."
            elif number == length and session % 3 == 0:
                question = FOLLOW_UPS[session % len(FOLLOW_UPS)]
                answer = "You're welcome! Anything else I can help with?"
            traces.append(_turn(rng, session, number, history, question, answer, tenant=tenant))
    return traces


def _call(call_id: str, name: str, arguments: dict[str, object]) -> dict[str, object]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip


# (what the user asked, the tool calls as (name, arguments, result or None, error or None),
# the final answer); a tool call with an error and then the same call again is a retry.
AGENT_TASKS = {
    "good": (
        "Why was I charged twice in November?",
        [
            (
                "get_invoice",
                {"month": "2026-11"},
                {"invoices": ["INV-2211", "INV-2212"], "duplicate": True},
                None,
            )
        ],
        "You were charged twice because invoice INV-2212 duplicated INV-2211. A refund for "
        "INV-2212 has been requested; it reaches your card in 5-10 days.",
    ),
    "two_tools": (
        "Cancel my Pro plan and tell me what happens to my projects.",
        [
            (
                "get_subscription",
                {"workspace": "acme"},
                {"plan": "pro", "renews": "2026-12-01"},
                None,
            ),
            (
                "search_docs",
                {"query": "downgrade pro to free"},
                [
                    "Downgrades take effect at the "
                    "end of the billing period; extra projects become read-only."
                ],
                None,
            ),
        ],
        "Your Pro plan renews on 2026-12-01; after cancelling it ends then, and projects above "
        "the free limit of 3 become read-only (nothing is deleted).",
    ),
    "retried": (
        "Send me my October invoice.",
        [
            ("get_invoice", {"month": "2026-10"}, None, "billing API timed out after 10s"),
            ("get_invoice", {"month": "2026-10"}, {"invoices": ["INV-2107"]}, None),
        ],
        "Here is your October invoice: INV-2107. It is also under Billing > Invoices.",
    ),
    "owned_up": (
        "Refund invoice INV-2212 please.",
        [
            ("create_refund", {"invoice": "INV-2212"}, None, "refund service unavailable (503)"),
            ("create_refund", {"invoice": "INV-2212"}, None, "refund service unavailable (503)"),
        ],
        "Sorry, the refund service is unavailable right now, so I could not file the refund. "
        "Please try again later or contact billing@northwind.example.",
    ),
    "ignored": (
        "Change my billing email to finance@acme.example.",
        [
            (
                "update_billing_contact",
                {"email": "finance@acme.example"},
                None,
                "permission denied: requires the billing admin role",
            )
        ],
        "Done! Your billing email is now finance@acme.example.",
    ),
    "loop": (
        "Which of my invoices are unpaid?",
        [("search_invoices", {"status": "unpaid"}, [], None)] * 3,
        "You have no unpaid invoices.",
    ),
    "ended_on_call": (
        "Upgrade me to Business.",
        [("change_plan", {"plan": "business"}, None, None)],
        "",
    ),
    "over_bound": (
        "List every invoice since 2024.",
        [
            ("get_invoice", {"month": f"{2024 + m // 12}-{m % 12 + 1:02d}"}, {"invoices": []}, None)
            for m in range(27)
        ],
        "I checked every month since January 2024: there are no invoices in that period.",
    ),
}
# Which tasks run, in order; the last six form three two-turn agent threads.
AGENT_PLAN = ["good", "retried", "owned_up", "ignored", "loop", "ended_on_call", "over_bound",
              "two_tools", "good", "retried", "two_tools", "good",
              "good", "retried", "owned_up", "good", "two_tools", "good"]  # fmt: skip


def agent_run(run: int, task: str, history: list[dict[str, object]]) -> dict[str, object]:
    """One agent run as steps (agent → model call → tool calls → model call) and messages."""
    question, calls, answer = AGENT_TASKS[task]
    at = f"2026-11-22T{10 + run % 8:02d}:{(run * 5) % 60:02d}"
    steps: list[dict[str, object]] = [
        {"id": "agent", "kind": "agent", "name": "billing-agent", "started_at": f"{at}:00Z"},
        {"id": "llm-1", "kind": "llm", "name": "gpt-4o", "model": "gpt-4o", "parent_id": "agent",
         "latency_ms": 900.0, "tokens": {"input": 820, "output": 40}},
    ]  # fmt: skip
    history.append({"role": "user", "content": question})
    asked: list[dict[str, object]] = []
    attempts: dict[str, int] = {}
    for n, (name, arguments, result, error) in enumerate(calls):
        key = json.dumps([name, arguments], sort_keys=True)
        retry = attempts.get(key, 0) > 0 and n > 0 and calls[n - 1][3] is not None
        call_id = asked[-1]["id"] if retry else f"call_{run:02d}_{n}"
        if not retry:
            asked.append(_call(str(call_id), name, arguments))
        attempts[key] = attempts.get(key, 0) + 1
        step: dict[str, object] = {
            "id": f"tool-{n}", "kind": "tool", "name": name, "parent_id": "agent",
            "tool_call_id": call_id, "arguments": arguments, "latency_ms": 120.0 + 40 * n,
            "attempt": 2 if retry else 1,
        }  # fmt: skip
        if error is not None:
            step["error"] = error
        elif result is not None:
            step["result"] = result
        steps.append(step)
    history.append({"role": "assistant", "content": None, "tool_calls": asked})
    for call in asked:
        outcome = next(
            (err or json.dumps(res)) for name, args, res, err in reversed(calls)
            if _call(str(call["id"]), name, args)["function"] == call["function"]
        )  # fmt: skip
        history.append({"role": "tool", "tool_call_id": call["id"], "content": outcome})
    trace: dict[str, object] = {
        "trace_id": f"demo-agent-{run:02d}",
        "input": question,
        "messages": list(history),
        "output": answer,
        "model": "gpt-4o",
        "tenant": TENANTS[run % len(TENANTS)],
        "feature": "billing-agent",
        "prompt_version": "billing-agent-v2",
        "app_version": "2.14.1",
        "latency_ms": 1500.0 + 300 * len(calls),
        "tokens": {"input": 1600 + 200 * len(calls), "output": 90},
        "cost_usd": round((1600 + 200 * len(calls)) * 2.5e-6 + 90 * 1e-5, 6),
        "started_at": f"{at}:00Z",
    }
    if answer:
        steps.append({"id": "llm-2", "kind": "llm", "name": "gpt-4o", "model": "gpt-4o",
                      "parent_id": "agent", "result": answer, "latency_ms": 700.0})  # fmt: skip
        history.append({"role": "assistant", "content": answer})
        trace["finish_reason"] = "stop"
    else:
        trace["finish_reason"] = "tool_calls"
    trace["steps"] = steps
    return trace


def agent_runs() -> list[dict[str, object]]:
    """The runs of AGENT_PLAN; the last six in pairs, each pair one session (a thread)."""
    traces = []
    threads = len(AGENT_PLAN) - 6
    history: list[dict[str, object]] = []
    for run, task in enumerate(AGENT_PLAN):
        if run < threads or (run - threads) % 2 == 0:
            history = [{"role": "system", "content": "You are Northwind's billing agent."}]
        trace = agent_run(run, task, history)
        if run >= threads:
            trace["session_id"] = f"agent-thread-{(run - threads) // 2 + 1}"
            trace["tenant"] = TENANTS[((run - threads) // 2) % len(TENANTS)]
        traces.append(trace)
    return traces


def invalid_entries(start: int) -> list[str]:
    """Payloads the sampler must dead-letter, each for a different reason."""

    def tid(n: int) -> str:
        return f"demo-{start + n:04d}"

    return [
        '{"trace_id": "' + tid(0) + '", "input": "hello", "output": "hi there"',  # not JSON
        json.dumps({"trace_id": tid(1), "input": "What is the rate limit?"}),  # no output
        json.dumps({"trace_id": tid(2), "output": "Fine.", "latency_ms": "fast"}),
        json.dumps({"trace_id": tid(3), "ouput": "typo in the field name"}),
        json.dumps({"trace_id": "", "output": "empty id"}),
        json.dumps({"trace_id": tid(5), "output": "ok", "user_feedback": "thumbs-up"}),
        json.dumps({"trace_id": tid(6), "output": "ok", "latency_ms": -5}),
        json.dumps({"trace_id": tid(7), "output": "x" * 300_000}),  # over the 256 KiB limit
        json.dumps({"trace_id": tid(8), "output": "ok", "contexts": "not a list"}),
        json.dumps(
            {
                "trace_id": tid(9),
                "output": "ok",
                "started_at": "2026-11-20T10:00:00Z",
                "ended_at": "2026-11-20T09:00:00Z",
            }
        ),
        "[]",
        "null",
    ]


if __name__ == "__main__":
    lines = build()
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {OUT}")
