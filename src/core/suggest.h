// "Did you mean …?" hints for misspelt names (config keys, sections,
// subcommands, environment variables). No I/O.
#pragma once

#include <string>
#include <vector>

namespace datatunnel {

// The entry of `known` closest to `word` by edit distance (insertions,
// deletions, substitutions, and swaps of two neighbours; case-insensitive),
// when it is close enough to be a likely typo (at most 1 edit for words of up
// to 4 characters, 2 up to 8, 3 beyond); "" when none is.
std::string ClosestMatch(const std::string& word, const std::vector<std::string>& known);

// ` (did you mean "x"?)` for ClosestMatch's answer, or "".
std::string DidYouMean(const std::string& word, const std::vector<std::string>& known);

}  // namespace datatunnel
