// A real OpenSSH server for the tests: Debian's sshd, started by hand on 127.0.0.1 with a
// configuration, host key and client key of its own in a private directory (so that it
// never reads the host's /etc/ssh), accepting only that key, for root.
//
// The daemon runs in the foreground as a child of the test; its per-connection processes
// can be killed while it keeps listening, which drops every open session the way a network
// failure would.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "tests/integration/guest_fixture.h"

namespace cloudvmi::test {

class TestSshd {
  public:
    // REQUIREs /usr/sbin/sshd, ssh and ssh-keygen (apt-get install openssh-server
    // openssh-client), then that `ssh host() true` works within a few seconds.
    TestSshd();
    // Kills the connections, stops the daemon and removes its directory.
    ~TestSshd();
    TestSshd(const TestSshd&) = delete;
    TestSshd& operator=(const TestSshd&) = delete;

    // ssh's options for this server (port, key, no host key checks, no prompts), to go
    // before host().
    std::vector<std::string> client_options() const;
    std::string host() const { return "root@127.0.0.1"; }
    int port() const { return port_; }
    // Runs a shell command on the server over ssh.
    CommandResult ssh(const std::string& command, int timeout_ms = 60000) const;
    // The daemon's stderr (every start attempt's).
    std::string log() const;

    // SIGKILLs every per-connection process of the daemon and waits until they are gone:
    // the server's end of every open session closes at once, as in a network failure,
    // while the daemon keeps listening for new ones. The sessions' commands are left to
    // notice (EOF on their input). Returns how many connections it dropped.
    int kill_connections();

  private:
    // Writes the configuration for `port` and starts the daemon on it.
    void start(int port);
    void stop_daemon();
    std::string dir_, key_;
    int port_ = 0;
    pid_t sshd_ = -1;
};

// `s` quoted for a POSIX shell (one word, whatever it holds), for commands run over ssh.
std::string shell_quote(const std::string& s);

}  // namespace cloudvmi::test
