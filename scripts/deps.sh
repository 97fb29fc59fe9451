#!/bin/sh
# Installs every Debian 12 package kumod needs to build, test and benchmark.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -q
# The services below (redis, rabbitmq, nats, opendkim, postfix) are started by the
# tests on loopback ports; keep apt from starting their system instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  build-essential cmake pkg-config ca-certificates \
  libevent-dev liblua5.4-dev librocksdb-dev libjansson-dev libzstd-dev zstd \
  libc-ares-dev libssl-dev openssl uuid-dev libcmocka-dev libcurl4-openssl-dev libjemalloc-dev \
  python3 python3-pytest python3-aiosmtpd python3-zstandard python3-prometheus-client python3-dkim \
  libpcre2-dev libyaml-dev zlib1g-dev libtomlplusplus-dev publicsuffix libsqlite3-dev libsystemd-dev \
  clang libclang-rt-14-dev \
  libhiredis-dev redis-server librabbitmq-dev rabbitmq-server libnats-dev nats-server \
  opendkim opendkim-tools chromium chromium-driver python3-selenium \
  swaks libnet-ssleay-perl libio-socket-ssl-perl postfix dnsmasq-base procps curl
# Debian's postfix package starts a system mail daemon; we never use it.
$SUDO postfix stop >/dev/null 2>&1 || true
