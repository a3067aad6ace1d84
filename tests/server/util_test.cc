// AppendLengthDelimited: a ListJobsResponse assembled from its jobs' serialized bytes (as ListJobs does)
// is the response protobuf itself would serialize, and parses back to the same jobs. ResolveUnderRoots:
// what is inside a root, what escapes, and what is missing.
#include "server/common/util.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {
namespace {

v1::Job JobWithBytes(const std::string& id, int payload) {
  v1::Job job;
  job.set_id(id);
  job.set_state(v1::QUEUED);
  job.set_queue_position(3);
  // A description long enough that the job's length takes a two-byte varint.
  job.mutable_spec()->set_display_name(std::string(static_cast<size_t>(payload), 'x'));
  return job;
}

TEST(AppendLengthDelimited, AssemblesTheResponseProtobufWouldSerialize) {
  v1::ListJobsResponse expected;
  *expected.add_jobs() = JobWithBytes("job-a", 10);
  *expected.add_jobs() = JobWithBytes("job-b", 300);
  expected.set_next_page_token("17");

  std::string assembled;
  for (const v1::Job& job : expected.jobs()) {
    AppendLengthDelimited(&assembled, v1::ListJobsResponse::kJobsFieldNumber, job.SerializeAsString());
  }
  AppendLengthDelimited(&assembled, v1::ListJobsResponse::kNextPageTokenFieldNumber, expected.next_page_token());

  EXPECT_EQ(assembled, expected.SerializeAsString());
  v1::ListJobsResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(assembled));
  ASSERT_EQ(parsed.jobs_size(), 2);
  EXPECT_EQ(parsed.jobs(1).id(), "job-b");
  EXPECT_EQ(parsed.jobs(1).spec().display_name().size(), 300u);
  EXPECT_EQ(parsed.next_page_token(), "17");
}

TEST(AppendLengthDelimited, HandlesEmptyBytesAndHighFieldNumbers) {
  std::string out;
  AppendLengthDelimited(&out, 1, "");
  EXPECT_EQ(out, std::string("\x0a\x00", 2));
  out.clear();
  AppendLengthDelimited(&out, 16, "ab");  // tag (16 << 3) | 2 = 130 takes two varint bytes
  EXPECT_EQ(out, std::string("\x82\x01\x02" "ab", 5));
}

TEST(ResolveUnderRoots, InsideEscapingAndMissingPathsEachGetTheirCode) {
  namespace fs = std::filesystem;
  std::string base = (fs::temp_directory_path() / "xtrain-roots-XXXXXX").string();
  ASSERT_NE(mkdtemp(base.data()), nullptr);
  const std::string root = base + "/root";
  fs::create_directories(root + "/set");
  std::ofstream(base + "/outside.txt") << "x";
  fs::create_symlink(base + "/outside.txt", root + "/escape");
  const std::vector<std::string> roots = {root};
  const std::string real_root = fs::canonical(root).string();

  absl::StatusOr<std::string> inside = ResolveUnderRoots(roots, "set", "f");
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(*inside, real_root + "/set");
  EXPECT_TRUE(ResolveUnderRoots(roots, real_root + "/set", "f").ok());
  for (const std::string& escaping : {std::string("../outside.txt"), base + "/outside.txt", std::string("escape"),
                                      base + "/missing-outside"}) {
    EXPECT_EQ(ResolveUnderRoots(roots, escaping, "f").status().code(), absl::StatusCode::kInvalidArgument) << escaping;
  }
  // Missing inside a root, given relative or (as the scheduler hands it to a worker) absolute.
  for (const std::string& missing : {std::string("gone"), real_root + "/gone"}) {
    const absl::Status status = ResolveUnderRoots(roots, missing, "f").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << missing;
    EXPECT_NE(status.message().find("does not exist"), absl::string_view::npos) << status;
  }
  fs::remove_all(base);
}

}  // namespace
}  // namespace xtrain::server
