"""The A/B test panel: set a test up on a draft campaign, then watch its arms and decide.

Thin over tested functions: Create calls ``create_ab_test`` with one subject variant per
line; the table is ``ab_report``; "Pick the winner now" calls ``pick_winner`` (a
conversion test needs its frame: call ``pick_winner(campaign, conversions=orders)`` in a
cell). Refresh re-reads the database, so it shows what any worker has done.
"""

from __future__ import annotations

import html as htmlmod
from typing import Any

import ipywidgets as widgets

from bulkmail_kernel.campaigns.abreport import ab_report
from bulkmail_kernel.campaigns.abtests import create_ab_test, pick_winner
from bulkmail_kernel.campaigns.campaigns import get_campaign
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.exceptions import BulkmailError
from bulkmail_kernel.records import CampaignRef

_COLUMNS = [
    "arm",
    "subject",
    "assigned",
    "sent",
    "clickers",
    "click_rate",
    "click_low",
    "click_high",
]


class AbTestPanel(widgets.VBox):
    """The panel :func:`ab_test_widget` returns; its controls are attributes, for tests."""

    def __init__(self, campaign: CampaignRef, database: Database) -> None:
        self.campaign, self.database = campaign, database
        self.subjects = widgets.Textarea(
            placeholder="one subject per line: variant A, B, ...", description="Subjects"
        )
        self.sample = widgets.FloatSlider(
            value=0.2, min=0.01, max=0.9, step=0.01, description="Sample"
        )
        self.holdout = widgets.FloatSlider(
            value=0.1, min=0.0, max=0.5, step=0.01, description="Holdout"
        )
        self.wait = widgets.Text(value="4h", description="Wait")
        self.metric = widgets.Dropdown(options=["clicks", "conversions"], description="Metric")
        self.seed = widgets.IntText(value=0, description="Seed")
        self.create = widgets.Button(description="Create test", button_style="primary")
        self.refresh = widgets.Button(description="Refresh")
        self.pick = widgets.Button(description="Pick the winner now", button_style="warning")
        self.message = widgets.HTML()
        self.table = widgets.HTML()
        self.setup = widgets.VBox(
            [
                self.subjects,
                self.sample,
                self.holdout,
                self.wait,
                self.metric,
                self.seed,
                self.create,
            ]
        )
        self.create.on_click(lambda _: self._act(self._create))
        self.refresh.on_click(lambda _: self._act(self.show))
        self.pick.on_click(lambda _: self._act(self._pick))
        super().__init__(
            [self.setup, widgets.HBox([self.refresh, self.pick]), self.message, self.table]
        )
        self._act(self.show)

    def _act(self, action: Any) -> None:
        try:
            action()
        except BulkmailError as exc:
            self.message.value = f"<b style='color:#b00'>{htmlmod.escape(exc.message)}</b>"

    def _create(self) -> None:
        variants = [{"subject": s.strip()} for s in self.subjects.value.splitlines() if s.strip()]
        create_ab_test(
            self.campaign,
            variants,
            sample=self.sample.value,
            holdout=self.holdout.value,
            wait=self.wait.value,
            metric=self.metric.value,
            seed=self.seed.value,
            db=self.database,
        )
        self.show()

    def _pick(self) -> None:
        report = pick_winner(self.campaign, db=self.database)
        self.show()
        self.message.value = f"variant {htmlmod.escape(str(report.attrs['winner']))} won"

    def show(self) -> None:
        """Re-read the test: the set-up form while there is none, else the arms' table."""
        info = get_campaign(self.campaign, db=self.database)
        try:
            report = ab_report(info.id, db=self.database)
        except BulkmailError:
            self.setup.layout.display = ""
            self.pick.disabled = True
            self.table.value = ""
            self.message.value = f"campaign {htmlmod.escape(info.name)}: no A/B test yet"
            return
        self.setup.layout.display = "none"
        winner = report.attrs.get("winner")
        self.pick.disabled = bool(winner)
        state = f"winner: {winner}" if winner else f"waiting ({report.attrs.get('metric')})"
        self.message.value = (
            f"campaign {htmlmod.escape(info.name)} ({info.status}), seed "
            f"{report.attrs.get('seed')}: {htmlmod.escape(state)}"
        )
        columns = [c for c in report.columns if c in _COLUMNS or c in ("uplift", "winner")]
        self.table.value = report[columns].to_html(index=False, float_format=lambda x: f"{x:.3f}")


def ab_test_widget(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> AbTestPanel:
    """Return the A/B test panel of ``campaign``: set the test up, watch it, pick the winner."""
    return AbTestPanel(campaign, resolve_database(db, url))
