// AppendLengthDelimited: a ListJobsResponse assembled from its jobs' serialized bytes (as ListJobs does)
// is the response protobuf itself would serialize, and parses back to the same jobs.
#include "server/common/util.h"

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

}  // namespace
}  // namespace xtrain::server
