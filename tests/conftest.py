from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import KeyLimits, Role
from aigateway.settings import PROVIDER_VARIABLES
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.testing.pgserver import PostgresServer
from aigateway.testing.ports import refusing_port

from .turns import taking_turns

# A client of a gateway started as a TestServer (the client, admin and anon fixtures).
GatewayClient = TestClient[web.Request, None]

MakeKey = Callable[..., Awaitable[str]]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Tests that take over about 1.15 s here (servers in subprocesses, outages, real waits;
# the shorter of two serial runs with --durations=0): `./run.sh test -m "not slow"`
# leaves them out for a quick loop. A new test that takes seconds joins this list.
SLOW = frozenset(
    (
        "test_admission::test_a_gzip_bomb_stops_at_max_body_size",
        "test_auth::test_expiry_applies_without_a_reload",
        "test_bench_paired::test_paired_comparison_against_head_prints_each_figure",
        "test_demo::test_the_demo_serves_its_keys_and_ctrl_c_leaves_nothing_behind",
        "test_body_fairness::test_a_blob_upload_is_never_held_whole",
        "test_body_fairness::test_a_wait_for_memory_other_keys_hold_ends_within_2_s",
        "test_body_fairness::test_eleven_trickling_uploads_of_one_key_do_not_stall_another_key",
        "test_body_fairness::test_one_key_holds_at_most_its_share_and_waits_its_turn",
        "test_body_fairness::test_only_bodies_below_the_rate_are_cut",
        "test_body_fairness::test_queued_bodies_of_one_key_do_not_hold_back_another",
        "test_body_fairness::test_time_spent_waiting_for_memory_is_not_held_against_a_body",
        "test_body_fairness::test_waits_for_memory_are_served_in_turn_across_keys",
        "test_bodypeek::test_non_ascii_runes_fold_as_in_go",
        "test_budget_bounds::test_a_thousand_embeddings_of_0_4_micro_units_cost_400",
        "test_budget_bounds::test_fifty_streams_at_once_stay_within_the_budget_on_three_gateways",
        "test_budgets::test_an_invoice_per_user_and_period",
        "test_cli_flags::test_a_locked_database_fails_clearly",
        "test_cli_live::test_cli_changes_reach_the_running_gateway",
        "test_cli_menu::test_a_users_budget_is_set_and_checked",
        "test_cli_menu::test_a_users_invoice_for_a_period",
        "test_cli_menu::test_cancel_in_a_prompt_goes_back_to_the_menu",
        "test_cli_menu::test_change_limits_models_and_role",
        "test_cli_menu::test_export_asks_for_a_file_and_a_format",
        "test_cli_menu::test_generate_asks_validates_and_shows_the_key_once",
        "test_cli_menu::test_generate_with_limits_and_an_allow_list",
        "test_cli_menu::test_models_are_synced_from_ollama_and_listed",
        "test_cli_menu::test_prices_are_set_listed_and_removed",
        "test_cli_menu::test_the_real_script_in_a_terminal",
        "test_cli_menu::test_usage_report_and_export",
        "test_client_quirks::test_ai_sdk_retries_an_over_budget_429_unless_max_retries_is_0",
        "test_cli_menu::test_users_are_listed_added_disabled_and_enabled",
        "test_dashboard::test_a_user_sees_its_own_pages_only_and_uses_the_playground",
        "test_database_folder::test_the_flag_cli_makes_the_folder_of_a_relative_sqlite_url",
        "test_database_folder::test_the_server_and_the_flag_cli_share_a_relative_sqlite_url_on_a_fresh_clone",
        "test_dashboard::test_an_admin_signs_in_creates_a_key_once_changes_and_revokes_it",
        "test_dashboard::test_the_api_docs_render_offline_under_their_policy",
        "test_dashboard::test_the_overview_shows_each_upstream_with_several",
        "test_dashboard::test_the_playground_shows_the_cost_the_gateway_charged",
        "test_dashboard_a11y::test_axe_finds_nothing_serious_on_any_page",
        "test_dashboard_a11y::test_axe_on_the_api_docs_is_reported",
        "test_dashboard_a11y::test_the_keyboard_reaches_every_control_with_a_visible_focus",
        "test_dashboard_fit::test_a_change_form_sends_only_what_changed_and_keeps_the_rest",
        "test_dashboard_fit::test_every_page_fits_every_screen_in_both_themes",
        "test_docs_examples::test_the_examples_of_a_page_run",
        "test_docs_examples::test_the_runner_keeps_every_rule_and_fails_a_failing_block",
        "test_exports_stream::test_a_key_runs_at_most_two_exports_and_gets_them_back",
        "test_exports_stream::test_twelve_exports_of_100k_records_keep_rss_and_health",
        "test_first_request::test_a_key_made_by_the_cli_works_on_its_first_request",
        "test_http_guard::test_a_head_sent_too_slowly_is_cut_off",
        "test_instances::test_a_budget_holds_exactly_across_instances",
        "test_instances::test_a_client_that_waits_for_each_answer_is_never_refused_a_slot",
        "test_instances::test_a_killed_gateways_slots_and_reservations_are_given_back",
        "test_instances::test_limits_hold_exactly_across_instances",
        "test_instances::test_three_instances_share_keys_and_usage",
        "test_journal_full::test_beyond_usage_memory_records_requests_are_refused_before_they_are_served",
        "test_journal_full::test_records_served_while_the_disk_is_full_reach_the_database_once",
        "test_model_sync::test_a_hostile_ollama_leaves_only_checked_values",
        "test_model_sync::test_an_unreachable_ollama_is_one_line_and_exit_1",
        "test_model_sync::test_models_are_synced_and_listed_with_their_prices",
        "test_model_sync::test_models_are_synced_from_every_ollama_upstream",
        "test_nothing_free::test_model_labels_in_metrics_stay_few_whatever_names_clients_send",
        "test_pg_outage::test_an_outage_under_load_loses_no_record",
        "test_pg_outage::test_budgets_while_the_database_is_away",
        "test_pg_outage::test_slots_held_across_an_outage_come_back_when_it_ends",
        "test_policy::test_concurrency_cap",
        "test_pricing::test_every_request_carries_its_cost_by_the_price_when_it_started",
        "test_provider_keys::test_the_tests_run_without_the_developers_provider_settings",
        "test_refusals::test_a_session_whose_key_expired_counts_against_its_key",
        "test_refusals::test_a_thousand_made_up_keys_make_one_row",
        "test_refusals::test_counts_waiting_for_a_locked_database_outlive_a_sigkill",
        "test_relay::test_a_50_mb_embed_body_passes",
        "test_restart_counts::test_a_record_replayed_twice_counts_once_on_the_shared_rows",
        "test_restart_counts::test_a_restart_counts_spend_the_database_cannot_take_yet",
        "test_restart_counts::test_a_restart_counts_the_journal_against_the_token_quota_before_admitting",
        "test_restart_counts::test_spend_taken_while_postgresql_was_away_outlives_a_sigkill",
        "test_restart_counts::test_tokens_of_a_request_ending_while_postgresql_is_away_outlive_a_sigkill",
        "test_restart_counts::test_tokens_used_while_postgresql_was_away_reach_the_shared_quota",
        "test_rollups::test_rollups_answer_like_the_records_over_any_period",
        "test_server_process::test_sigkill_under_load_loses_no_usage_record",
        "test_server_process::test_sigterm_after_10000_requests_loses_no_usage_record",
        "test_settings::test_the_clis_and_the_server_find_one_database_from_any_folder",
        "test_stream_ends::test_sigterm_ends_open_streams_in_their_dialects_within_the_timeout",
        "test_tls::test_serves_https_to_clients_that_trust_its_certificate",
        "test_upstreams::test_a_dead_upstream_is_failed_over_and_comes_back",
        "test_users::test_a_user_disabled_by_the_cli_is_refused_within_a_second",
        "test_users::test_the_flag_cli_manages_users",
    )
)


# Tests whose checks bound the time or memory a gateway takes (a latency, RSS): under
# pytest-xdist each runs alone, no other test beside it (turns.py).
ALONE = frozenset(
    (
        "test_body_fairness::test_a_slow_body_gets_408_frees_its_memory_and_its_connection",
        "test_body_fairness::test_a_wait_for_memory_other_keys_hold_ends_within_2_s",
        "test_body_fairness::test_eleven_trickling_uploads_of_one_key_do_not_stall_another_key",
        "test_body_fairness::test_queued_bodies_of_one_key_do_not_hold_back_another",
        "test_exports_stream::test_twelve_exports_of_100k_records_keep_rss_and_health",
        "test_stream_ends::test_sigterm_ends_open_streams_in_their_dialects_within_the_timeout",
    )
)


def pytest_configure(config: pytest.Config) -> None:
    """The gateway's tests run without the OpenAI and Anthropic settings a developer may
    have exported (OPENAI_API_KEY would add an upstream to every gateway a test starts,
    and send the key to it): removed for the whole session, before any test module is
    imported, so the subprocesses tests start go without them too. A test that wants
    one sets it itself."""
    for variable in PROVIDER_VARIABLES:
        os.environ.pop(variable, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs, from the fixtures it uses: `postgres` (a real
    PostgreSQL server), `browser` (Chromium; skipped where it is missing, except under
    CI=true, where it fails), and `slow`; so a quick loop can leave any of them out. And
    `alone` (ALONE), run last."""
    browser_missing = pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="Chromium is not installed (apt-get install chromium)",
    )
    for item in items:
        names = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        # (postgres, own_postgres, stoppable_postgres: each a real server; pg_url needs one)
        uses_postgres = "pg_url" in names or any("postgres" in name for name in names)
        if uses_postgres or params.get("database") == "postgresql":
            item.add_marker(pytest.mark.postgres)
            if isinstance(names, list):
                _databases_first(names)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)
            item.add_marker(browser_missing)
        function = getattr(item, "originalname", item.name)
        module = getattr(item, "module", None)  # (a test function's; other items have none)
        if module is not None:
            name = f"{module.__name__.rsplit('.', 1)[-1]}::{function}"
            if name in SLOW:
                item.add_marker(pytest.mark.slow)
            if name in ALONE:
                item.add_marker(pytest.mark.alone)
    # Those that run alone last: on two workers, each such test idles one worker until
    # the other's test ends; at the end they follow one another with little idling.
    items.sort(key=lambda item: item.get_closest_marker("alone") is not None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the dashboard tests saved their screenshots (tests/browser.py), for a person
    to look at."""
    browser = sys.modules.get(f"{__package__}.browser")
    saved = getattr(browser, "SAVED", None)
    if saved:
        terminalreporter.write_line(f"{len(saved)} screenshots in {saved[0].parent}")


@pytest.fixture(autouse=True)
def _turn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, a test marked `alone` waits until no other test runs, and none
    starts beside it (taken before the test's other fixtures start any server)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every worker
    with taking_turns(shared, request.node.get_closest_marker("alone") is not None):
        yield


def _databases_first(names: list[str]) -> None:
    """Set a test's database up before its gateways, so that it is dropped after they
    stop: a gateway whose database vanished under it retries its connections until it
    is stopped, and a socket of a failed attempt can outlive the test's event loop."""
    first = [name for name in names if "postgres" in name or name in ("pg_url", "database")]
    names[:] = first + [name for name in names if name not in first]


async def make_key(
    db_path: str,
    user: str = "alice",
    name: str = "laptop",
    role: Role = "user",
    expires_at: float | None = None,
    limits: KeyLimits | None = None,
    models: list[str] | None = None,
) -> str:
    """Create a key through its own connection, as the CLI would."""
    store = await Store.open(db_path)
    try:
        _, secret = await store.create_key(
            user, name, role, expires_at, limits or KeyLimits(), models
        )
    finally:
        await store.close()
    return secret


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer, fake: FakeOllama) -> TestServer:
    return await aiohttp_server(fake.app())


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where connections are refused, held for the test."""
    with refusing_port() as port:
        yield port


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.db")


@pytest.fixture
def settings(upstream: TestServer, db_path: str) -> Settings:
    return Settings(ollama_base_url=str(upstream.make_url("")).rstrip("/"), token_db_path=db_path)


@pytest.fixture
async def key(db_path: str) -> str:
    return await make_key(db_path)


@pytest.fixture
async def gateway(
    aiohttp_server: AiohttpServer, settings: Settings, key: str, admin_key: str
) -> TestServer:
    return await aiohttp_server(create_app(settings))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, gateway: TestServer, key: str) -> GatewayClient:
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def admin_key(db_path: str) -> str:
    return await make_key(db_path, "root", "ops", "admin")


@pytest.fixture
async def admin(
    aiohttp_client: AiohttpClient, gateway: TestServer, admin_key: str
) -> GatewayClient:
    """A client with an admin key, for model management and the admin API."""
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {admin_key}"})


@pytest.fixture
async def anon(aiohttp_client: AiohttpClient, gateway: TestServer) -> GatewayClient:
    return await aiohttp_client(gateway)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test gets its own database)."""
    server = PostgresServer().start()
    yield server
    server.close()


_database_numbers = itertools.count(1)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """DATABASE_URL of a fresh, empty PostgreSQL database."""
    name = f"test_{next(_database_numbers)}"
    postgres.sql(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    postgres.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A new database of each kind: a SQLite file path, or a PostgreSQL DATABASE_URL."""
    if request.param == "sqlite":
        return str(tmp_path / "tokens.db")
    url: str = request.getfixturevalue("pg_url")
    return url
