#define BOOST_TEST_MODULE bench_cli
#include <boost/test/unit_test.hpp>
BOOST_AUTO_TEST_CASE(pending) { BOOST_TEST(false, "suite bench_cli not written yet"); }
