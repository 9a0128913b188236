"""What a user of the training-free pass imports from `gad_callbacks`, and one set of defaults for every face."""

from gad_callbacks import DiagnosisConfig, GradientAlignmentConfig, PassSettings


def test_python_callback_and_cli_share_their_defaults():
    from gad_callbacks.cli.diagnose import DiagnoseArguments

    cfg = GradientAlignmentConfig()
    assert cfg.pass_settings() == PassSettings()
    budget = DiagnoseArguments().max_completion_length
    assert cfg.diagnosis(budget) == DiagnosisConfig(max_new_tokens=budget)
    assert cfg.pass_settings(budget) == PassSettings(max_completion_length=budget)
