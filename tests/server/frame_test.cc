#include "server/protocol/frame.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "xtrain/worker/v1/worker.pb.h"

namespace xtrain::server {
namespace {

using xtrain::worker::v1::WorkerMessage;

// Three messages of different sizes; the first is empty, so its frame has a zero-length payload.
std::vector<WorkerMessage> Messages() {
  std::vector<WorkerMessage> messages(3);
  messages[1].mutable_step()->set_step(7);
  messages[1].mutable_step()->set_loss(0.25);
  auto* finished = messages[2].mutable_finished();
  finished->set_code(5);
  finished->set_message(std::string(300, 'm'));
  (*finished->mutable_final_metrics())["accuracy"] = 0.875;
  return messages;
}

std::string Stream(const std::vector<WorkerMessage>& messages) {
  std::string stream;
  for (const WorkerMessage& message : messages) stream += EncodeFrame(message);
  return stream;
}

// Every whole frame the decoder holds now.
std::vector<std::string> Drain(FrameDecoder& decoder) {
  std::vector<std::string> payloads;
  while (true) {
    absl::StatusOr<std::optional<std::string>> next = decoder.Next();
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !next->has_value()) return payloads;
    payloads.push_back(**next);
  }
}

void ExpectPayloads(const std::vector<std::string>& payloads, const std::vector<WorkerMessage>& messages) {
  ASSERT_EQ(payloads.size(), messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    WorkerMessage parsed;
    ASSERT_TRUE(ParseFrame(payloads[i], parsed).ok());
    EXPECT_EQ(parsed.SerializeAsString(), messages[i].SerializeAsString()) << "message " << i;
  }
}

std::string Header(uint32_t length) {
  std::string header(4, '\0');
  for (int i = 0; i < 4; ++i) header[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return header;
}

TEST(Frame, LayoutIsLittleEndianLengthThenPayload) {
  WorkerMessage message = Messages()[1];
  const std::string frame = EncodeFrame(message);
  ASSERT_EQ(frame.size(), 4 + message.ByteSizeLong());
  EXPECT_EQ(frame.substr(0, 4), Header(static_cast<uint32_t>(message.ByteSizeLong())));
  EXPECT_EQ(frame.substr(4), message.SerializeAsString());
  EXPECT_EQ(EncodeFrame(WorkerMessage()), Header(0));
}

TEST(Frame, DecodesAcrossEverySplitPoint) {
  const std::vector<WorkerMessage> messages = Messages();
  const std::string stream = Stream(messages);
  for (size_t split = 0; split <= stream.size(); ++split) {
    SCOPED_TRACE(split);
    FrameDecoder decoder;
    decoder.Feed(stream.substr(0, split));
    std::vector<std::string> payloads = Drain(decoder);
    decoder.Feed(stream.substr(split));
    for (std::string& payload : Drain(decoder)) payloads.push_back(std::move(payload));
    ExpectPayloads(payloads, messages);
    EXPECT_EQ(decoder.pending(), 0u);
  }
}

TEST(Frame, DecodesOneByteAtATime) {
  const std::vector<WorkerMessage> messages = Messages();
  const std::string stream = Stream(messages);
  FrameDecoder decoder;
  std::vector<std::string> payloads;
  for (size_t i = 0; i < stream.size(); ++i) {
    decoder.Feed(stream.substr(i, 1));
    for (std::string& payload : Drain(decoder)) payloads.push_back(std::move(payload));
  }
  ExpectPayloads(payloads, messages);
  EXPECT_EQ(decoder.pending(), 0u);
}

TEST(Frame, DecodesBackToBackFramesFedAtOnce) {
  std::vector<WorkerMessage> messages;
  for (int round = 0; round < 200; ++round) {
    for (const WorkerMessage& message : Messages()) messages.push_back(message);
  }
  FrameDecoder decoder;
  decoder.Feed(Stream(messages));
  ExpectPayloads(Drain(decoder), messages);
  EXPECT_EQ(decoder.pending(), 0u);
}

TEST(Frame, PartialFrameWaitsForTheRest) {
  const std::string frame = EncodeFrame(Messages()[2]);
  FrameDecoder decoder;
  decoder.Feed(frame.substr(0, 3));
  EXPECT_EQ(decoder.pending(), 3u);
  EXPECT_TRUE(Drain(decoder).empty());
  decoder.Feed(frame.substr(3, frame.size() - 4));
  EXPECT_EQ(decoder.pending(), frame.size() - 1);
  EXPECT_TRUE(Drain(decoder).empty());
  decoder.Feed(frame.substr(frame.size() - 1));
  EXPECT_EQ(Drain(decoder).size(), 1u);
}

TEST(Frame, OversizeLengthIsRefused) {
  for (uint32_t length : {kMaxFrameBytes + 1, 0xffffffffu}) {
    FrameDecoder decoder;
    decoder.Feed(Header(length) + "abc");
    for (int call = 0; call < 2; ++call) {  // the stream stays refused
      absl::StatusOr<std::optional<std::string>> next = decoder.Next();
      ASSERT_FALSE(next.ok());
      EXPECT_EQ(next.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(next.status().message().find("limit"), absl::string_view::npos) << next.status();
    }
  }
  // The limit itself is a valid length: the decoder waits for the bytes, holding only what it was fed.
  FrameDecoder decoder;
  decoder.Feed(Header(kMaxFrameBytes));
  absl::StatusOr<std::optional<std::string>> next = decoder.Next();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ(decoder.pending(), 4u);
}

TEST(Frame, ParseRefusesBytesThatAreNotTheMessage) {
  WorkerMessage message;
  absl::Status parsed = ParseFrame(std::string(4, '\xff'), message);
  EXPECT_EQ(parsed.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.message().find("xtrain.worker.v1.WorkerMessage"), absl::string_view::npos) << parsed;
}

// A connected Unix socket pair, closed at scope exit.
struct SocketPair {
  SocketPair() { EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0); }
  ~SocketPair() {
    Close(0);
    Close(1);
  }
  void Close(int end) {
    if (fds[end] >= 0) ::close(fds[end]);
    fds[end] = -1;
  }
  int fds[2] = {-1, -1};
};

TEST(Frame, BlockingPairRoundTrips) {
  SocketPair pair;
  const std::vector<WorkerMessage> messages = Messages();
  for (const WorkerMessage& message : messages) ASSERT_TRUE(WriteFrame(pair.fds[0], message).ok());
  pair.Close(0);
  std::vector<std::string> payloads;
  while (true) {
    absl::StatusOr<std::optional<std::string>> read = ReadFrame(pair.fds[1]);
    ASSERT_TRUE(read.ok()) << read.status();
    if (!read->has_value()) break;  // a clean end of stream
    payloads.push_back(**read);
  }
  ExpectPayloads(payloads, messages);
}

TEST(Frame, LargeFrameRoundTrips) {
  SocketPair pair;
  WorkerMessage big;
  big.mutable_finished()->set_message(std::string(3u << 20, 'b'));  // several read chunks
  absl::Status written;
  std::thread writer([&] { written = WriteFrame(pair.fds[0], big); });
  absl::StatusOr<std::optional<std::string>> read = ReadFrame(pair.fds[1]);
  writer.join();
  ASSERT_TRUE(written.ok()) << written;
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, big.SerializeAsString());
}

TEST(Frame, TruncatedStreamIsDataLoss) {
  const std::string frame = EncodeFrame(Messages()[2]);
  for (size_t cut : {size_t{2}, size_t{4}, frame.size() - 1}) {
    SCOPED_TRACE(cut);
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    ASSERT_EQ(::write(fds[0], frame.data(), cut), static_cast<ssize_t>(cut));
    ::close(fds[0]);
    absl::StatusOr<std::optional<std::string>> read = ReadFrame(fds[1]);
    ::close(fds[1]);
    ASSERT_FALSE(read.ok());
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  }
}

TEST(Frame, ReadRefusesOversizeLength) {
  SocketPair pair;
  const std::string header = Header(kMaxFrameBytes + 1);
  ASSERT_EQ(::write(pair.fds[0], header.data(), header.size()), 4);
  absl::StatusOr<std::optional<std::string>> read = ReadFrame(pair.fds[1]);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
}

TEST(Frame, WriteToAClosedPeerIsAnErrorNotSigpipe) {
  SocketPair pair;
  pair.Close(1);
  absl::Status written = WriteFrame(pair.fds[0], Messages()[2]);
  EXPECT_FALSE(written.ok());
}

TEST(Frame, WriteAndReadOnAPipe) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  const WorkerMessage message = Messages()[1];
  ASSERT_TRUE(WriteFrame(fds[1], message).ok());
  ::close(fds[1]);
  absl::StatusOr<std::optional<std::string>> read = ReadFrame(fds[0]);
  ::close(fds[0]);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, message.SerializeAsString());
}

}  // namespace
}  // namespace xtrain::server
