"""`syncd units` renders units that work as they are, or says what would keep them from working."""

from __future__ import annotations

import os
import pwd

from click.testing import CliRunner

from syncd.cli import main
from syncd.service.daemon import load
from syncd.service.unit_files import render_units, unit_warnings
from tests.support.harness import make_config


def test_units_warn_about_paths_under_tmp_and_home_and_name_the_config_in_the_header(tmp_path):
    path = make_config(tmp_path / "site")  # pytest's folders are under /tmp
    config = load(path)
    me = pwd.getpwuid(os.geteuid()).pw_name
    units = render_units(config, user=me, syncd_path="/root/venv/bin/syncd")
    service = units["syncd.service"]
    assert "/etc/syncd/syncd.yaml" not in service, "the header and ExecStart name the same config"
    assert f"config in {path}" in service and f"-c {path} " in service
    warnings = unit_warnings(config, user=me, rendered_user=me, syncd_path="/root/venv/bin/syncd")
    assert any("PrivateTmp=true" in w and str(path) in w for w in warnings), warnings
    assert any("ProtectHome=true" in w and "/root/venv/bin/syncd" in w for w in warnings), warnings
    assert not any("no --user" in w for w in warnings)


def test_the_instance_template_takes_no_paths_from_one_instance(tmp_path):
    config = load(make_config(tmp_path / "site"))
    template = render_units(config, user="root", syncd_path="/opt/syncd/bin/syncd")["syncd@.service"]
    assert str(tmp_path) not in template
    assert "ExecStart=/opt/syncd/bin/syncd run -c /etc/syncd/%i.yaml" in template
    assert "systemctl edit syncd@NAME" in template


def test_units_refuses_an_unknown_user_and_warns_when_it_falls_back_to_root(tmp_path):
    path = make_config(tmp_path / "site")
    unknown = CliRunner().invoke(main, ["units", "-c", str(path), "--user", "no-such-user-here"])
    assert unknown.exit_code == 2 and "there is no user 'no-such-user-here'" in unknown.output
    plain = CliRunner().invoke(main, ["units", "-c", str(path)])
    assert plain.exit_code == 0, plain.output
    owner = pwd.getpwuid(path.stat().st_uid).pw_name
    assert f"\nUser={owner}\n" in plain.output
    assert ("no --user: the unit runs as root" in plain.output) == (owner == "root")
