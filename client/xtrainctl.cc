// xtrainctl: the command-line client of xtrain-server (client/xtrainctl_commands.h).
#include <sys/ioctl.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "client/xtrainctl_commands.h"

int main(int argc, char** argv) {
  xtrain::client::Terminal terminal;
  terminal.is_tty = ::isatty(STDOUT_FILENO) == 1;
  struct winsize size;
  if (terminal.is_tty && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) terminal.width = size.ws_col;
  const std::vector<std::string> args(argv + 1, argv + argc);
  return xtrain::client::RunXtrainctl(args, std::cout, std::cerr, terminal);
}
