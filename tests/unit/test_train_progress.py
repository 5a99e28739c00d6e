"""Stage progress: plain lines where stdout is not a terminal, a bar where it is."""

from __future__ import annotations

import io

from wmtp.train.progress import StageProgress, clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_for_logged_steps_and_validations_only():
    out = io.StringIO()
    progress = StageProgress(True, "smoke/critic", total=12, start=0, stream=out)
    progress.update(1, {"loss/total": 0.5, "epoch": 0.1})  # not a logged step: nothing
    progress.update(2, {"loss/total": 0.4, "epoch": 0.17, "tokens_per_s": 1234.4})
    progress.validation(2, "val/loss", 0.36, is_best=True)
    progress.validation(4, "val/loss", 0.37, is_best=False)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("smoke/critic step 2/12 epoch 0.17 loss 0.4000 tokens/s 1234 elapsed 0:00:0")
    assert " eta 0:00:" in lines[0]
    assert lines[1:] == [
        "smoke/critic step 2/12 validation val/loss 0.3600 (new best)",
        "smoke/critic step 4/12 validation val/loss 0.3700",
    ]


def test_a_terminal_gets_the_bar_and_other_ranks_nothing():
    progress = StageProgress(True, "smoke/baseline", total=4, start=0, stream=Terminal())
    progress.update(3, {"epoch": 1.5, "loss/total": 6.6, "tokens_per_s": 10.0})
    assert progress.bar.tasks[0].fields["info"] == "epoch 1.50 loss 6.6000"
    progress.close()
    silent = io.StringIO()
    rank1 = StageProgress(False, "smoke/baseline", total=4, start=0, stream=silent)
    rank1.update(1, {"tokens_per_s": 1.0})
    rank1.validation(1, "val/ce", 1.0, True)
    assert silent.getvalue() == ""


def test_eta_counts_only_the_steps_this_process_ran():
    assert clock(3725) == "1:02:05"
    out = io.StringIO()
    progress = StageProgress(True, "x/y", total=100, start=90, stream=out)  # resumed at step 90
    progress.started -= 10  # 10 s for 5 steps → 2 s a step, 5 steps left
    progress.update(95, {"tokens_per_s": 1.0})
    assert "elapsed 0:00:10 eta 0:00:10" in out.getvalue()
