#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace xtrain::server::testing {

// One HTTP/1.0 answer.
struct HttpResponse {
  int status = 0;
  std::string body;
};

// GET http://127.0.0.1:<port><target> (the target already URL-encoded), read to the end of the
// connection. Unavailable when nothing answers; DeadlineExceeded after `timeout`.
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& target,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

// `text` percent-encoded for a URL's query string.
std::string UrlEncode(const std::string& text);

// The value of `series` (name{labels} exactly as exposed, labels sorted by name, as prometheus-cpp
// writes them) in Prometheus text `exposition`; NaN when it is not there.
double SampleValue(const std::string& exposition, const std::string& series);

// A TCP port on 127.0.0.1 that nothing listened on a moment ago (bound to port 0, then closed): for
// programs that cannot be told to pick one themselves.
int FreePort();

}  // namespace xtrain::server::testing
