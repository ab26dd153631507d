"""Render + build MIME bytes per second: our direct MIME assembly vs the stdlib EmailMessage.

Run: python bench/bench_render.py [N]. Prints one table; the target is >= 3,000 msg/s for
the fast path on one core with a ~5 KB personalised HTML template that has a loop.
Times are CPU seconds of this process (``time.process_time``), so other work on a
shared machine inflates them less than wall-clock time would.
"""

from __future__ import annotations

import email.policy
import sys
import time

from bulkmail_kernel.compose.mime import _stdlib_message, build_email_message, build_mime
from bulkmail_kernel.compose.render import render
from bulkmail_kernel.compose.templates import template_from_html

ITEMS = """
      <tr><td class="item">{{ product.name }}</td>
          <td class="price">{{ product.price }} €</td></tr>"""
HTML = (
    """<!DOCTYPE html>
<html lang="sk"><head><meta charset="utf-8"><title>Ponuka</title>
<style>
  body { margin: 0; background: #f2f4f7; }
  .box { background: #ffffff; padding: 24px; font-family: Arial, sans-serif; color: #1f2933; }
  .item { padding: 6px 12px; border-bottom: 1px solid #e4e7eb; }
  .price { padding: 6px 12px; text-align: right; font-weight: bold; }
  h1 { font-size: 22px; color: #102a43; }
  a.button { display: inline-block; padding: 12px 24px; background: #1f6feb; color: #fff; }
</style></head>
<body><table role="presentation" width="100%" cellpadding="0" cellspacing="0">
<tr><td align="center">
<table role="presentation" class="box" width="600" cellpadding="0" cellspacing="0">
<tr><td><img src="https://example.com/logo.png" alt="Firma" width="120" height="40"></td></tr>
<tr><td><h1>{{ recipient | salutation }},</h1>
<p>pripravili sme pre Vás ponuku na mieru.
Ako zákazník typu {{ customer_type | default('štandard') }}
z mesta {{ city | default('Bratislava') }}
máte nárok na zľavu do {{ valid_until | date }}.</p>
<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut
labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris
nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit
esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident.</p>
<table role="presentation" width="100%" cellpadding="0" cellspacing="0">
{% for product in products %}"""
    + ITEMS
    + """
{% endfor %}
</table>
<p><a class="button" href="https://example.com/offer?c={{ contact_id }}">Zobraziť ponuku</a></p>
<p>Sunt in culpa qui officia deserunt mollit anim id est laborum. Sed ut perspiciatis unde omnis
iste natus error sit voluptatem accusantium doloremque laudantium, totam rem aperiam, eaque ipsa
quae ab illo inventore veritatis et quasi architecto beatae vitae dicta sunt explicabo.</p>
</td></tr>
<tr><td style="font-size: 12px; color: #7b8794;">Firma s.r.o., Hlavná 1, Bratislava.
<a href="{{ unsubscribe_url }}">Odhlásiť sa z odberu</a></td></tr>
</table></td></tr></table></body></html>
"""
)

FIRST = ["Ján", "Mária", "Peter", "Zuzana", "Иван", "Анна", "John", "Emily"]
LAST = ["Novák", "Kováčová", "Horváth", "Vargová", "Петров", "Иванова", "Smith", "Brown"]


def rows(n: int) -> list[dict]:
    return [
        {
            "contact_point_id": i,
            "contact_id": i,
            "first_name": FIRST[i % 8],
            "last_name": LAST[i % 8],
            "gender": "m" if i % 2 == 0 else "f",
            "language": "sk",
            "address": f"user{i}@example.com",
            "customer_type": "VIP" if i % 5 == 0 else None,
            "city": "Košice",
        }
        for i in range(n)
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    template = template_from_html(
        HTML, subject="{{ first_name }}, ponuka pre Vás do {{ valid_until | date }}"
    )
    values = {
        "valid_until": "2025-09-30",
        "products": [{"name": f"Produkt číslo {k}", "price": f"{10 + k},90"} for k in range(12)],
    }
    recipients = rows(n)
    sample = render(
        template,
        recipients[0],
        values=values,
        unsubscribe_url="https://e.com/u/0",
        sender="Firma <info@firma.sk>",
    )
    print(
        f"rendered HTML size: {len(sample.html.encode()) / 1024:.1f} KB, "
        f"text {len(sample.text.encode()) / 1024:.1f} KB"
    )

    def fast(row: dict, i: int) -> bytes:
        msg = render(
            template,
            row,
            values=values,
            unsubscribe_url=f"https://e.com/u/{i}",
            sender="Firma <info@firma.sk>",
        )
        return build_mime(msg, message_id=f"<{i}.bm@firma.sk>")

    def stdlib(row: dict, i: int) -> bytes:
        msg = render(
            template,
            row,
            values=values,
            unsubscribe_url=f"https://e.com/u/{i}",
            sender="Firma <info@firma.sk>",
        )
        return build_email_message(msg, message_id=f"<{i}.bm@firma.sk>").as_bytes(
            policy=email.policy.default
        )

    def stdlib_plain(row: dict, i: int) -> bytes:
        msg = render(
            template,
            row,
            values=values,
            unsubscribe_url=f"https://e.com/u/{i}",
            sender="Firma <info@firma.sk>",
        )
        built, _ = _stdlib_message(msg, f"<{i}.bm@firma.sk>", None)
        return built.as_bytes(policy=email.policy.default)

    def render_only(row: dict, i: int) -> object:
        return render(
            template,
            row,
            values=values,
            unsubscribe_url=f"https://e.com/u/{i}",
            sender="Firma <info@firma.sk>",
        )

    results = []
    for label, fn, count in (
        ("render only", render_only, n),
        ("render + build_mime (bytes)", fast, n),
        ("render + stdlib EmailMessage.as_bytes", stdlib_plain, max(n // 5, 200)),
        ("  same + header re-parse check", stdlib, max(n // 5, 200)),
    ):
        fn(recipients[0], 0)  # warm-up
        start = time.process_time()
        for i in range(count):
            fn(recipients[i % n], i)
        elapsed = time.process_time() - start
        results.append((label, count, elapsed / count * 1e6, count / elapsed))
    print(f"{'path':40} {'messages':>9} {'µs/msg':>9} {'msg/s':>9}")
    for label, count, us, rate in results:
        print(f"{label:40} {count:9d} {us:9.0f} {rate:9.0f}")
    speedup = results[1][3] / results[2][3]
    print(
        f"build_mime path is {speedup:.1f}x the stdlib path; target >= 3,000 msg/s: "
        f"{'met' if results[1][3] >= 3000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
