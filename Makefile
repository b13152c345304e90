# Two commands take a fresh machine to a running daemon: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml
STAMP := $(VENV)/.nstd-installed

.PHONY: run test install weights bench clean browser postgres shares prometheus

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

install: $(STAMP)

weights: $(STAMP)
	$(BIN)/nstd weights fetch

# Folders of the local example in config.example.yaml; a real install names its own.
# CONFIG=FILE runs another config: `make run CONFIG=config.cpu.yaml` for a first look on a CPU.
run: weights $(CONFIG)
	@mkdir -p inbox outbox failed processed state
	$(BIN)/nstd run --config $(CONFIG)

# The example at 256 px and 200 iterations. Made once, when missing; then it is yours to edit.
config.cpu.yaml:
	sed -e 's/^  size: 512 /  size: 256 /' -e 's/^  iterations: 500 /  iterations: 200 /' config.example.yaml > $@.tmp
	grep -q '^  size: 256 ' $@.tmp && grep -q '^  iterations: 200 ' $@.tmp && mv $@.tmp $@

# The gallery test renders outbox/index.html in headless Chromium, from Debian's packages:
# chromium and what it depends on, no recommended extras, nothing else upgraded.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := apt-get install -y -q --no-install-recommends --no-upgrade
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ echo "make: installing Debian's chromium (no recommends) for the gallery test"; \
	  $(SUDO) $(APT_INSTALL) chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) $(APT_INSTALL) chromium >/dev/null; } || \
	  echo "make: could not install chromium; the gallery test will fail until it is installed"; }

# The journal tests run on SQLite and on a real PostgreSQL server, which the tests start
# from Debian's postgresql package in a temporary folder (no system cluster is used).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	{ echo "make: installing Debian's postgresql (no recommends) for the journal tests"; \
	  $(SUDO) $(APT_INSTALL) postgresql >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) $(APT_INSTALL) postgresql >/dev/null; } || \
	  echo "make: could not install postgresql; the PostgreSQL journal tests will fail until it is installed"; }

# The network-share tests serve a real SMB share (Samba, mounted through FUSE with smbnetfs)
# and a real SFTP folder (OpenSSH, mounted with sshfs) on loopback, from temporary folders.
SHARE_PACKAGES := samba smbnetfs openssh-server openssh-client sshfs fuse3
shares:
	@command -v smbd >/dev/null 2>&1 && command -v smbnetfs >/dev/null 2>&1 && command -v sshfs >/dev/null 2>&1 && \
	  test -x /usr/sbin/sshd || \
	{ echo "make: installing Debian's $(SHARE_PACKAGES) (no recommends) for the network-share tests"; \
	  $(SUDO) $(APT_INSTALL) $(SHARE_PACKAGES) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) $(APT_INSTALL) $(SHARE_PACKAGES) >/dev/null; } || \
	  echo "make: could not install $(SHARE_PACKAGES); the network-share tests will fail until they are installed"; }

# The metrics test reads /metrics back through a real Prometheus server (and promtool).
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
	{ echo "make: installing Debian's prometheus (no recommends) for the metrics test"; \
	  $(SUDO) $(APT_INSTALL) prometheus >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) $(APT_INSTALL) prometheus >/dev/null; } || \
	  echo "make: could not install prometheus; the metrics test will fail until it is installed"; }

test: $(STAMP) browser postgres shares prometheus
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
