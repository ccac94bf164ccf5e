#pragma once
// Shared by the C++ tests: `call` must throw E (c10::ValueError for bad arguments, c10::Error for
// any diffops error) with a message starting with `prefix`.

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

template <typename E = c10::Error>
void expect_error(const std::function<void()>& call, const std::string& prefix) {
  try {
    call();
    ADD_FAILURE() << "no exception, expected " << prefix;
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what_without_backtrace()).rfind(prefix, 0), 0u)
        << e.what_without_backtrace();
  }
}
