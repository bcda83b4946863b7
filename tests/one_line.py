"""The check that a tool's bad flag is one `error:` line on stderr and a non-zero exit."""

import pytest


def assert_one_error_line(main, capsys, argv, message: str) -> None:
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
