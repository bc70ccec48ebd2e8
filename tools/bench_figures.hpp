// tools/bench_figures.hpp — the figures the bench measures, their samples,
// and how they are summed up (medians, percentiles, ratios to a baseline).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <boost/json.hpp>

namespace ringckpt::tools::bench {

enum class Unit { gbps, ms, mib };

const char* unit_name(Unit u);  // "GB/s", "ms", "MiB"

struct Figure {
  std::string name;    // as in the JSON
  std::string label;   // as in the table
  Unit unit = Unit::gbps;
  std::vector<double> samples;
  std::string baseline;         // name of the figure it is compared with; "" none
  std::string baseline_label;   // how the table says it
  std::optional<double> ratio;  // median / baseline median (set at the end)
  std::optional<double> fixed_baseline;  // compare with a constant instead
};

// The figures of one run, in the order they are shown.
class Figures {
 public:
  // REQUIRES: all().reserve() made room: references handed out stay valid.
  Figure& add(std::string name, std::string label, Unit unit, std::string baseline = "",
              std::string baseline_label = "");
  // The figure called `name`; std::logic_error if there is none.
  Figure& operator[](const std::string& name);
  const Figure& operator[](const std::string& name) const;
  const Figure* find(const std::string& name) const;
  std::vector<Figure>& all() { return figures_; }
  const std::vector<Figure>& all() const { return figures_; }

  // Sets the ratio of every figure with samples to the median of its
  // baseline (or its fixed baseline), where that is positive.
  void compute_ratios();

 private:
  std::vector<Figure> figures_;  // stable: reserved before use
};

double median(std::vector<double> v);             // 0 for none
// GB/s of `bytes` moved in `seconds`; 0 for a time that is not positive.
inline double gb_per_s(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0;
}
double percentile(std::vector<double> v, double p);  // nearest rank; 0 for none

// A number with 3 or 4 significant digits ("1234", "123.4", "12.34", "0.123").
std::string num(double v);

// The value, or JSON null if it is absent or not finite.
boost::json::value number_or_null(const std::optional<double>& v);

}  // namespace ringckpt::tools::bench
