// Pins the two error classifiers at the edges: every librdkafka error code
// (librdkafka 2.0.2) and every PostgreSQL SQLSTATE (PostgreSQL 15's
// errcodes.txt) with the kind it maps to. A change here is a behaviour change:
// say why in the comment beside the row.
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>

#include <set>
#include <string>

#include "broker/kafka.h"
#include "core/status.h"
#include "pg/connection.h"

namespace datatunnel {
namespace {

struct KafkaCase {
  rd_kafka_resp_err_t err;
  bool retryable;
};

// Every rd_kafka_resp_err_t enumerator of librdkafka 2.0.2, in header order.
// Retryable unless configuration, authorization, data that never fits, or
// data the broker no longer has.
constexpr KafkaCase kKafkaCases[] = {
    {RD_KAFKA_RESP_ERR__BEGIN, true},  // sentinel, never returned
    {RD_KAFKA_RESP_ERR__BAD_MSG, true},
    {RD_KAFKA_RESP_ERR__BAD_COMPRESSION, true},
    {RD_KAFKA_RESP_ERR__DESTROY, true},
    {RD_KAFKA_RESP_ERR__FAIL, true},
    {RD_KAFKA_RESP_ERR__TRANSPORT, true},
    {RD_KAFKA_RESP_ERR__CRIT_SYS_RESOURCE, true},
    {RD_KAFKA_RESP_ERR__RESOLVE, true},
    {RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
     true},  // message.timeout.ms passed: sending again may succeed
    {RD_KAFKA_RESP_ERR__PARTITION_EOF, true},
    {RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
     false},  // a partition the topic does not have: will not appear
    {RD_KAFKA_RESP_ERR__FS, true},
    {RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, true},     // being created (auto-create or an operator)
    {RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, true},  // the brokers come back
    {RD_KAFKA_RESP_ERR__INVALID_ARG, false},
    {RD_KAFKA_RESP_ERR__TIMED_OUT, true},
    {RD_KAFKA_RESP_ERR__QUEUE_FULL, true},
    {RD_KAFKA_RESP_ERR__ISR_INSUFF, true},
    {RD_KAFKA_RESP_ERR__NODE_UPDATE, true},
    {RD_KAFKA_RESP_ERR__SSL, false},  // TLS handshake or certificate: configuration
    {RD_KAFKA_RESP_ERR__WAIT_COORD, true},
    {RD_KAFKA_RESP_ERR__UNKNOWN_GROUP, true},
    {RD_KAFKA_RESP_ERR__IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR__EXISTING_SUBSCRIPTION, true},
    {RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true},
    {RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, true},
    {RD_KAFKA_RESP_ERR__CONFLICT, true},
    {RD_KAFKA_RESP_ERR__STATE, true},
    {RD_KAFKA_RESP_ERR__UNKNOWN_PROTOCOL, true},
    {RD_KAFKA_RESP_ERR__NOT_IMPLEMENTED, true},
    {RD_KAFKA_RESP_ERR__AUTHENTICATION, false},
    {RD_KAFKA_RESP_ERR__NO_OFFSET, true},
    {RD_KAFKA_RESP_ERR__OUTDATED, true},
    {RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE, true},
    {RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE, true},
    {RD_KAFKA_RESP_ERR__WAIT_CACHE, true},
    {RD_KAFKA_RESP_ERR__INTR, true},
    {RD_KAFKA_RESP_ERR__KEY_SERIALIZATION, true},
    {RD_KAFKA_RESP_ERR__VALUE_SERIALIZATION, true},
    {RD_KAFKA_RESP_ERR__KEY_DESERIALIZATION, true},
    {RD_KAFKA_RESP_ERR__VALUE_DESERIALIZATION, true},
    {RD_KAFKA_RESP_ERR__PARTIAL, true},
    {RD_KAFKA_RESP_ERR__READ_ONLY, true},
    {RD_KAFKA_RESP_ERR__NOENT, true},
    {RD_KAFKA_RESP_ERR__UNDERFLOW, true},
    {RD_KAFKA_RESP_ERR__INVALID_TYPE, true},
    {RD_KAFKA_RESP_ERR__RETRY, true},
    {RD_KAFKA_RESP_ERR__PURGE_QUEUE, true},     // our own purge before a new session
    {RD_KAFKA_RESP_ERR__PURGE_INFLIGHT, true},  // our own purge before a new session
    {RD_KAFKA_RESP_ERR__FATAL,
     false},  // the instance is unusable; Producer::FatalError() decides whether a new one helps
    {RD_KAFKA_RESP_ERR__INCONSISTENT, true},
    {RD_KAFKA_RESP_ERR__GAPLESS_GUARANTEE, true},
    {RD_KAFKA_RESP_ERR__MAX_POLL_EXCEEDED, true},
    {RD_KAFKA_RESP_ERR__UNKNOWN_BROKER, true},
    {RD_KAFKA_RESP_ERR__NOT_CONFIGURED, true},
    {RD_KAFKA_RESP_ERR__FENCED, true},  // a newer producer instance; a new session re-sends
    {RD_KAFKA_RESP_ERR__APPLICATION, true},
    {RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST, true},
    {RD_KAFKA_RESP_ERR__NOOP, true},
    {RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET,
     false},                         // auto.offset.reset=error: as OFFSET_OUT_OF_RANGE
    {RD_KAFKA_RESP_ERR__END, true},  // sentinel, never returned
    {RD_KAFKA_RESP_ERR_UNKNOWN, true},
    {RD_KAFKA_RESP_ERR_NO_ERROR, true},  // callers pass it for "no answer yet"
    {RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
     false},  // retention removed changes not yet applied: re-sync needed
    {RD_KAFKA_RESP_ERR_INVALID_MSG, true},
    {RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, true},  // being created (auto-create or an operator)
    {RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE,
     true},  // a protocol-level size error, not our message being too big
    {RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, true},
    {RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, true},
    {RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
     false},  // the same message never fits: raise message.max.bytes
    {RD_KAFKA_RESP_ERR_STALE_CTRL_EPOCH, true},
    {RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE, true},
    {RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, true},
    {RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_NOT_COORDINATOR, true},
    {RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, false},  // invalid topic name
    {RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE, false},
    {RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
     true},  // min.insync.replicas not met: replicas come back
    {RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, true},
    {RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS, false},  // the acks property
    {RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION, true},
    {RD_KAFKA_RESP_ERR_INCONSISTENT_GROUP_PROTOCOL, true},
    {RD_KAFKA_RESP_ERR_INVALID_GROUP_ID, true},
    {RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID, true},
    {RD_KAFKA_RESP_ERR_INVALID_SESSION_TIMEOUT, true},
    {RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE, true},
    {RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP, true},
    {RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM,
     false},  // sasl.mechanisms the broker does not enable
    {RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE, true},
    {RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION, false},
    {RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS, true},
    {RD_KAFKA_RESP_ERR_INVALID_PARTITIONS, true},
    {RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR, true},
    {RD_KAFKA_RESP_ERR_INVALID_REPLICA_ASSIGNMENT, true},
    {RD_KAFKA_RESP_ERR_INVALID_CONFIG, false},
    {RD_KAFKA_RESP_ERR_NOT_CONTROLLER, true},
    {RD_KAFKA_RESP_ERR_INVALID_REQUEST, true},
    {RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT, false},
    {RD_KAFKA_RESP_ERR_POLICY_VIOLATION,
     false},  // the broker's create-topic policy refuses our settings
    {RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
     true},  // idempotent producer resets the sequence
    {RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER, true},
    {RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH, true},
    {RD_KAFKA_RESP_ERR_INVALID_TXN_STATE, true},
    {RD_KAFKA_RESP_ERR_INVALID_PRODUCER_ID_MAPPING, true},
    {RD_KAFKA_RESP_ERR_INVALID_TRANSACTION_TIMEOUT, true},
    {RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS, true},
    {RD_KAFKA_RESP_ERR_TRANSACTION_COORDINATOR_FENCED, true},
    {RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_SECURITY_DISABLED, true},
    {RD_KAFKA_RESP_ERR_OPERATION_NOT_ATTEMPTED, true},
    {RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
     true},  // a broker's disk: leadership moves to another replica
    {RD_KAFKA_RESP_ERR_LOG_DIR_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID, true},
    {RD_KAFKA_RESP_ERR_REASSIGNMENT_IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_AUTH_DISABLED, true},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_OWNER_MISMATCH, true},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_REQUEST_NOT_ALLOWED, true},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_AUTHORIZATION_FAILED, false},
    {RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_EXPIRED, true},
    {RD_KAFKA_RESP_ERR_INVALID_PRINCIPAL_TYPE, true},
    {RD_KAFKA_RESP_ERR_NON_EMPTY_GROUP, true},
    {RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_FETCH_SESSION_ID_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_INVALID_FETCH_SESSION_EPOCH, true},
    {RD_KAFKA_RESP_ERR_LISTENER_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_TOPIC_DELETION_DISABLED, true},
    {RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH, true},
    {RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH, true},
    {RD_KAFKA_RESP_ERR_UNSUPPORTED_COMPRESSION_TYPE,
     false},  // compression.type the broker does not support
    {RD_KAFKA_RESP_ERR_STALE_BROKER_EPOCH, true},
    {RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_MEMBER_ID_REQUIRED, true},
    {RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_GROUP_MAX_SIZE_REACHED, true},
    {RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID, true},
    {RD_KAFKA_RESP_ERR_ELIGIBLE_LEADERS_NOT_AVAILABLE, true},
    {RD_KAFKA_RESP_ERR_ELECTION_NOT_NEEDED, true},
    {RD_KAFKA_RESP_ERR_NO_REASSIGNMENT_IN_PROGRESS, true},
    {RD_KAFKA_RESP_ERR_GROUP_SUBSCRIBED_TO_TOPIC, true},
    {RD_KAFKA_RESP_ERR_INVALID_RECORD,
     false},  // the broker rejects the record itself (e.g. a compacted topic without a key)
    {RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT, true},
    {RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED, true},
    {RD_KAFKA_RESP_ERR_PRODUCER_FENCED, true},  // a newer producer instance; a new session re-sends
    {RD_KAFKA_RESP_ERR_RESOURCE_NOT_FOUND, true},
    {RD_KAFKA_RESP_ERR_DUPLICATE_RESOURCE, true},
    {RD_KAFKA_RESP_ERR_UNACCEPTABLE_CREDENTIAL, false},
    {RD_KAFKA_RESP_ERR_INCONSISTENT_VOTER_SET, true},
    {RD_KAFKA_RESP_ERR_INVALID_UPDATE_VERSION, true},
    {RD_KAFKA_RESP_ERR_FEATURE_UPDATE_FAILED, true},
    {RD_KAFKA_RESP_ERR_PRINCIPAL_DESERIALIZATION_FAILURE, true},
    {RD_KAFKA_RESP_ERR_END_ALL, true},  // sentinel, never returned
};

TEST(KafkaClassifier, EveryCodeOfTheHeader) {
  for (const KafkaCase& c : kKafkaCases) {
    EXPECT_EQ(broker::IsRetryableKafkaError(c.err), c.retryable)
        << rd_kafka_err2name(c.err) << " (" << static_cast<int>(c.err) << ")";
  }
}

// The librdkafka we run with knows no code the table above leaves out: a
// newer release's codes need a decision here and in IsRetryableKafkaError.
TEST(KafkaClassifier, TableCoversEveryCodeLibrdkafkaKnows) {
  std::set<int> listed;
  for (const KafkaCase& c : kKafkaCases) listed.insert(c.err);
  const rd_kafka_err_desc* descs = nullptr;
  size_t n = 0;
  rd_kafka_get_err_descs(&descs, &n);
  ASSERT_GT(n, 0u);
  for (size_t i = 0; i < n; ++i) {
    if (!descs[i].name) continue;  // a gap in the numbering
    EXPECT_TRUE(listed.count(descs[i].code)) << "unclassified: " << descs[i].name;
  }
}

// Values no header names (a newer librdkafka.so than the header, garbage):
// retrying is the safe answer, and nothing is undefined.
TEST(KafkaClassifier, UnknownValuesAreRetryable) {
  for (int e : {-100000, -201, -120, -99, -2, 98, 500, 100000}) {
    EXPECT_TRUE(broker::IsRetryableKafkaError(e)) << e;
  }
}

struct SqlStateCase {
  const char* sqlstate;
  StatusCode kind;
};

// Every SQLSTATE of PostgreSQL 15 (errcodes.txt), in its order; the comment
// is the condition name. kFatal unless the row says why not: class 08, 40,
// 53, 58 and a few operator-intervention and lock codes heal by waiting
// (kRetryable); class 28 and 3D000 need a configuration change (kBadConfig);
// class 22 is about one row's data (kBadData).
constexpr SqlStateCase kSqlStateCases[] = {
    {"00000", StatusCode::kFatal},  // successful_completion: success and warnings are never errors;
                                    // if one came, stop loudly
    {"01000", StatusCode::kFatal},  // warning
    {"0100C", StatusCode::kFatal},  // dynamic_result_sets_returned
    {"01008", StatusCode::kFatal},  // implicit_zero_bit_padding
    {"01003", StatusCode::kFatal},  // null_value_eliminated_in_set_function
    {"01007", StatusCode::kFatal},  // privilege_not_granted
    {"01006", StatusCode::kFatal},  // privilege_not_revoked
    {"01004", StatusCode::kFatal},  // string_data_right_truncation
    {"01P01", StatusCode::kFatal},  // deprecated_feature
    {"02000", StatusCode::kFatal},  // no_data
    {"02001", StatusCode::kFatal},  // no_additional_dynamic_result_sets_returned
    {"03000", StatusCode::kFatal},  // sql_statement_not_yet_complete
    {"08000", StatusCode::kRetryable},  // connection_exception
    {"08003", StatusCode::kRetryable},  // connection_does_not_exist
    {"08006", StatusCode::kRetryable},  // connection_failure
    {"08001", StatusCode::kRetryable},  // sqlclient_unable_to_establish_sqlconnection
    {"08004", StatusCode::kRetryable},  // sqlserver_rejected_establishment_of_sqlconnection
    {"08007", StatusCode::kRetryable},  // transaction_resolution_unknown: PostgreSQL never sends
                                        // it; a COMMIT lost on the way is kInDoubt from
                                        // Connection::Commit/ExecPipeline, not from a SQLSTATE
    {"08P01", StatusCode::kRetryable},  // protocol_violation
    {"09000", StatusCode::kFatal},      // triggered_action_exception
    {"0A000", StatusCode::kFatal},      // feature_not_supported
    {"0B000", StatusCode::kFatal},      // invalid_transaction_initiation
    {"0F000", StatusCode::kFatal},      // locator_exception
    {"0F001", StatusCode::kFatal},      // invalid_locator_specification
    {"0L000", StatusCode::kFatal},      // invalid_grantor
    {"0LP01", StatusCode::kFatal},      // invalid_grant_operation
    {"0P000", StatusCode::kFatal},      // invalid_role_specification
    {"0Z000", StatusCode::kFatal},      // diagnostics_exception
    {"0Z002", StatusCode::kFatal},      // stacked_diagnostics_accessed_without_active_handler
    {"20000", StatusCode::kFatal},      // case_not_found
    {"21000", StatusCode::kFatal},      // cardinality_violation
    {"22000", StatusCode::kBadData},    // data_exception
    {"2202E", StatusCode::kBadData},
    {"2202E", StatusCode::kBadData},  // array_subscript_error
    {"22021", StatusCode::kBadData},  // character_not_in_repertoire
    {"22008", StatusCode::kBadData},  // datetime_field_overflow
    {"22008", StatusCode::kBadData},
    {"22012", StatusCode::kBadData},  // division_by_zero
    {"22005", StatusCode::kBadData},  // error_in_assignment
    {"2200B", StatusCode::kBadData},  // escape_character_conflict
    {"22022", StatusCode::kBadData},  // indicator_overflow
    {"22015", StatusCode::kBadData},  // interval_field_overflow
    {"2201E", StatusCode::kBadData},  // invalid_argument_for_logarithm
    {"22014", StatusCode::kBadData},  // invalid_argument_for_ntile_function
    {"22016", StatusCode::kBadData},  // invalid_argument_for_nth_value_function
    {"2201F", StatusCode::kBadData},  // invalid_argument_for_power_function
    {"2201G", StatusCode::kBadData},  // invalid_argument_for_width_bucket_function
    {"22018", StatusCode::kBadData},  // invalid_character_value_for_cast
    {"22007", StatusCode::kBadData},  // invalid_datetime_format
    {"22019", StatusCode::kBadData},  // invalid_escape_character
    {"2200D", StatusCode::kBadData},  // invalid_escape_octet
    {"22025", StatusCode::kBadData},  // invalid_escape_sequence
    {"22P06", StatusCode::kBadData},  // nonstandard_use_of_escape_character
    {"22010", StatusCode::kBadData},  // invalid_indicator_parameter_value
    {"22023", StatusCode::kBadData},  // invalid_parameter_value
    {"22013", StatusCode::kBadData},  // invalid_preceding_or_following_size
    {"2201B", StatusCode::kBadData},  // invalid_regular_expression
    {"2201W", StatusCode::kBadData},  // invalid_row_count_in_limit_clause
    {"2201X", StatusCode::kBadData},  // invalid_row_count_in_result_offset_clause
    {"2202H", StatusCode::kBadData},  // invalid_tablesample_argument
    {"2202G", StatusCode::kBadData},  // invalid_tablesample_repeat
    {"22009", StatusCode::kBadData},  // invalid_time_zone_displacement_value
    {"2200C", StatusCode::kBadData},  // invalid_use_of_escape_character
    {"2200G", StatusCode::kBadData},  // most_specific_type_mismatch
    {"22004", StatusCode::kBadData},  // null_value_not_allowed
    {"22002", StatusCode::kBadData},  // null_value_no_indicator_parameter
    {"22003", StatusCode::kBadData},  // numeric_value_out_of_range
    {"2200H", StatusCode::kBadData},  // sequence_generator_limit_exceeded
    {"22026", StatusCode::kBadData},  // string_data_length_mismatch
    {"22001", StatusCode::kBadData},  // string_data_right_truncation
    {"22011", StatusCode::kBadData},  // substring_error
    {"22027", StatusCode::kBadData},  // trim_error
    {"22024", StatusCode::kBadData},  // unterminated_c_string
    {"2200F", StatusCode::kBadData},  // zero_length_character_string
    {"22P01", StatusCode::kBadData},  // floating_point_exception
    {"22P02", StatusCode::kBadData},  // invalid_text_representation
    {"22P03", StatusCode::kBadData},  // invalid_binary_representation
    {"22P04", StatusCode::kBadData},  // bad_copy_file_format
    {"22P05", StatusCode::kBadData},  // untranslatable_character
    {"2200L", StatusCode::kBadData},  // not_an_xml_document
    {"2200M", StatusCode::kBadData},  // invalid_xml_document
    {"2200N", StatusCode::kBadData},  // invalid_xml_content
    {"2200S", StatusCode::kBadData},  // invalid_xml_comment
    {"2200T", StatusCode::kBadData},  // invalid_xml_processing_instruction
    {"22030", StatusCode::kBadData},  // duplicate_json_object_key_value
    {"22031", StatusCode::kBadData},  // invalid_argument_for_sql_json_datetime_function
    {"22032", StatusCode::kBadData},  // invalid_json_text
    {"22033", StatusCode::kBadData},  // invalid_sql_json_subscript
    {"22034", StatusCode::kBadData},  // more_than_one_sql_json_item
    {"22035", StatusCode::kBadData},  // no_sql_json_item
    {"22036", StatusCode::kBadData},  // non_numeric_sql_json_item
    {"22037", StatusCode::kBadData},  // non_unique_keys_in_a_json_object
    {"22038", StatusCode::kBadData},  // singleton_sql_json_item_required
    {"22039", StatusCode::kBadData},  // sql_json_array_not_found
    {"2203A", StatusCode::kBadData},  // sql_json_member_not_found
    {"2203B", StatusCode::kBadData},  // sql_json_number_not_found
    {"2203C", StatusCode::kBadData},  // sql_json_object_not_found
    {"2203D", StatusCode::kBadData},  // too_many_json_array_elements
    {"2203E", StatusCode::kBadData},  // too_many_json_object_members
    {"2203F", StatusCode::kBadData},  // sql_json_scalar_required
    {"2203G", StatusCode::kBadData},  // sql_json_item_cannot_be_cast_to_target_type
    {"23000", StatusCode::kFatal},    // integrity_constraint_violation
    {"23001", StatusCode::kFatal},    // restrict_violation
    {"23502", StatusCode::kFatal},    // not_null_violation
    {"23503", StatusCode::kFatal},    // foreign_key_violation
    {"23505", StatusCode::kFatal},    // unique_violation: a duplicate key cannot heal by retrying;
                                      // the applier looks at it itself
    {"23514", StatusCode::kFatal},    // check_violation
    {"23P01", StatusCode::kFatal},    // exclusion_violation
    {"24000", StatusCode::kFatal},    // invalid_cursor_state
    {"25000", StatusCode::kFatal},    // invalid_transaction_state
    {"25001", StatusCode::kFatal},    // active_sql_transaction
    {"25002", StatusCode::kFatal},    // branch_transaction_already_active
    {"25008", StatusCode::kFatal},    // held_cursor_requires_same_isolation_level
    {"25003", StatusCode::kFatal},    // inappropriate_access_mode_for_branch_transaction
    {"25004", StatusCode::kFatal},    // inappropriate_isolation_level_for_branch_transaction
    {"25005", StatusCode::kFatal},    // no_active_sql_transaction_for_branch_transaction
    {"25006", StatusCode::kFatal},    // read_only_sql_transaction
    {"25007", StatusCode::kFatal},    // schema_and_data_statement_mixing_not_supported
    {"25P01", StatusCode::kFatal},    // no_active_sql_transaction
    {"25P02",
     StatusCode::kFatal},  // in_failed_sql_transaction: a statement after an earlier failure in the
                           // same transaction: the earlier one carries the cause
    {"25P03", StatusCode::kFatal},      // idle_in_transaction_session_timeout
    {"26000", StatusCode::kFatal},      // invalid_sql_statement_name
    {"27000", StatusCode::kFatal},      // triggered_data_change_violation
    {"28000", StatusCode::kBadConfig},  // invalid_authorization_specification
    {"28P01",
     StatusCode::kBadConfig},       // invalid_password: wrong password: the operator must change it
    {"2B000", StatusCode::kFatal},  // dependent_privilege_descriptors_still_exist
    {"2BP01", StatusCode::kFatal},  // dependent_objects_still_exist
    {"2D000", StatusCode::kFatal},  // invalid_transaction_termination
    {"2F000", StatusCode::kFatal},  // sql_routine_exception
    {"2F005", StatusCode::kFatal},  // function_executed_no_return_statement
    {"2F002", StatusCode::kFatal},  // modifying_sql_data_not_permitted
    {"2F003", StatusCode::kFatal},  // prohibited_sql_statement_attempted
    {"2F004", StatusCode::kFatal},  // reading_sql_data_not_permitted
    {"34000", StatusCode::kFatal},  // invalid_cursor_name
    {"38000", StatusCode::kFatal},  // external_routine_exception
    {"38001", StatusCode::kFatal},  // containing_sql_not_permitted
    {"38002", StatusCode::kFatal},  // modifying_sql_data_not_permitted
    {"38003", StatusCode::kFatal},  // prohibited_sql_statement_attempted
    {"38004", StatusCode::kFatal},  // reading_sql_data_not_permitted
    {"39000", StatusCode::kFatal},  // external_routine_invocation_exception
    {"39001", StatusCode::kFatal},  // invalid_sqlstate_returned
    {"39004", StatusCode::kFatal},  // null_value_not_allowed
    {"39P01", StatusCode::kFatal},  // trigger_protocol_violated
    {"39P02", StatusCode::kFatal},  // srf_protocol_violated
    {"39P03", StatusCode::kFatal},  // event_trigger_protocol_violated
    {"3B000", StatusCode::kFatal},  // savepoint_exception
    {"3B001", StatusCode::kFatal},  // invalid_savepoint_specification
    {"3D000", StatusCode::kBadConfig},  // invalid_catalog_name: the DSN names a missing database
    {"3F000", StatusCode::kFatal},      // invalid_schema_name: a missing schema is not healed by
                                        // waiting (init creates it)
    {"40000", StatusCode::kRetryable},  // transaction_rollback
    {"40002", StatusCode::kRetryable},  // transaction_integrity_constraint_violation: class 40: the
                                        // transaction was rolled back, a new one may succeed
    {"40001", StatusCode::kRetryable},  // serialization_failure
    {"40003", StatusCode::kRetryable},  // statement_completion_unknown: class 40; PostgreSQL does
                                        // not send it
    {"40P01", StatusCode::kRetryable},  // deadlock_detected: deadlock: the other transaction wins,
                                        // ours can retry
    {"42000", StatusCode::kFatal},      // syntax_error_or_access_rule_violation
    {"42601", StatusCode::kFatal},      // syntax_error
    {"42501",
     StatusCode::kFatal},  // insufficient_privilege: missing privilege: an operator must GRANT
    {"42846", StatusCode::kFatal},  // cannot_coerce
    {"42803", StatusCode::kFatal},  // grouping_error
    {"42P20", StatusCode::kFatal},  // windowing_error
    {"42P19", StatusCode::kFatal},  // invalid_recursion
    {"42830", StatusCode::kFatal},  // invalid_foreign_key
    {"42602", StatusCode::kFatal},  // invalid_name
    {"42622", StatusCode::kFatal},  // name_too_long
    {"42939", StatusCode::kFatal},  // reserved_name
    {"42804", StatusCode::kFatal},  // datatype_mismatch
    {"42P18", StatusCode::kFatal},  // indeterminate_datatype
    {"42P21", StatusCode::kFatal},  // collation_mismatch
    {"42P22", StatusCode::kFatal},  // indeterminate_collation
    {"42809", StatusCode::kFatal},  // wrong_object_type
    {"428C9", StatusCode::kFatal},  // generated_always
    {"42703", StatusCode::kFatal},  // undefined_column
    {"34000", StatusCode::kFatal},
    {"3D000", StatusCode::kBadConfig},  // the DSN names a missing database
    {"42883", StatusCode::kFatal},      // undefined_function
    {"26000", StatusCode::kFatal},
    {"3F000", StatusCode::kFatal},  // a missing schema is not healed by waiting (init creates it)
    {"42P01", StatusCode::kFatal},  // undefined_table
    {"42P02", StatusCode::kFatal},  // undefined_parameter
    {"42704", StatusCode::kFatal},  // undefined_object
    {"42701", StatusCode::kFatal},  // duplicate_column
    {"42P03", StatusCode::kFatal},  // duplicate_cursor
    {"42P04", StatusCode::kFatal},  // duplicate_database
    {"42723", StatusCode::kFatal},  // duplicate_function
    {"42P05", StatusCode::kFatal},  // duplicate_prepared_statement
    {"42P06", StatusCode::kFatal},  // duplicate_schema
    {"42P07", StatusCode::kFatal},  // duplicate_table
    {"42712", StatusCode::kFatal},  // duplicate_alias
    {"42710", StatusCode::kFatal},  // duplicate_object
    {"42702", StatusCode::kFatal},  // ambiguous_column
    {"42725", StatusCode::kFatal},  // ambiguous_function
    {"42P08", StatusCode::kFatal},  // ambiguous_parameter
    {"42P09", StatusCode::kFatal},  // ambiguous_alias
    {"42P10", StatusCode::kFatal},  // invalid_column_reference
    {"42611", StatusCode::kFatal},  // invalid_column_definition
    {"42P11", StatusCode::kFatal},  // invalid_cursor_definition
    {"42P12", StatusCode::kFatal},  // invalid_database_definition
    {"42P13", StatusCode::kFatal},  // invalid_function_definition
    {"42P14", StatusCode::kFatal},  // invalid_prepared_statement_definition
    {"42P15", StatusCode::kFatal},  // invalid_schema_definition
    {"42P16", StatusCode::kFatal},  // invalid_table_definition
    {"42P17", StatusCode::kFatal},  // invalid_object_definition
    {"44000", StatusCode::kFatal},  // with_check_option_violation
    {"53000", StatusCode::kRetryable},  // insufficient_resources
    {"53100", StatusCode::kRetryable},  // disk_full: disk full: heals when space is freed
    {"53200", StatusCode::kRetryable},  // out_of_memory
    {"53300", StatusCode::kRetryable},  // too_many_connections: too many connections: heals when
                                        // others disconnect
    {"53400", StatusCode::kRetryable},  // configuration_limit_exceeded: a limit such as
                                        // max_locks_per_transaction; as for class 53
    {"54000", StatusCode::kFatal},      // program_limit_exceeded
    {"54001", StatusCode::kFatal},      // statement_too_complex
    {"54011", StatusCode::kFatal},      // too_many_columns
    {"54023", StatusCode::kFatal},      // too_many_arguments
    {"55000", StatusCode::kFatal},  // object_not_in_prerequisite_state: object not in prerequisite
                                    // state (e.g. wal_level): needs an operator
    {"55006", StatusCode::kRetryable},  // object_in_use: another session holds the object (e.g.
                                        // DROP while in use)
    {"55P02", StatusCode::kFatal},      // cant_change_runtime_param
    {"55P03", StatusCode::kRetryable},  // lock_not_available: lock_timeout or NOWAIT: the lock
                                        // holder finishes
    {"55P04", StatusCode::kFatal},      // unsafe_new_enum_value_usage
    {"57000", StatusCode::kFatal},      // operator_intervention: operator intervention without a
                                        // specific reason: stop loudly
    {"57014", StatusCode::kRetryable},  // query_canceled: statement_timeout or pg_cancel_backend:
                                        // the next try may finish
    {"57P01", StatusCode::kRetryable},  // admin_shutdown: the server is shutting down (fast/smart):
                                        // it comes back
    {"57P02", StatusCode::kRetryable},  // crash_shutdown: crash recovery: it comes back
    {"57P03",
     StatusCode::kRetryable},  // cannot_connect_now: starting up or in recovery: it comes back
    {"57P04", StatusCode::kRetryable},  // database_dropped: the database was dropped: the reconnect
                                        // then fails with 3D000 (kBadConfig)
    {"57P05",
     StatusCode::kRetryable},  // idle_session_timeout: idle_session_timeout: a new session works
    {"58000", StatusCode::kRetryable},  // system_error
    {"58030", StatusCode::kRetryable},  // io_error
    {"58P01", StatusCode::kRetryable},  // undefined_file: a server-side file is missing; class 58
                                        // (system error) may heal
    {"58P02", StatusCode::kRetryable},  // duplicate_file
    {"72000", StatusCode::kFatal},  // snapshot_too_old: snapshot too old (old_snapshot_threshold):
                                    // stop loudly
    {"F0000", StatusCode::kFatal},  // config_file_error
    {"F0001", StatusCode::kFatal},  // lock_file_exists
    {"HV000", StatusCode::kFatal},  // fdw_error
    {"HV005", StatusCode::kFatal},  // fdw_column_name_not_found
    {"HV002", StatusCode::kFatal},  // fdw_dynamic_parameter_value_needed
    {"HV010", StatusCode::kFatal},  // fdw_function_sequence_error
    {"HV021", StatusCode::kFatal},  // fdw_inconsistent_descriptor_information
    {"HV024", StatusCode::kFatal},  // fdw_invalid_attribute_value
    {"HV007", StatusCode::kFatal},  // fdw_invalid_column_name
    {"HV008", StatusCode::kFatal},  // fdw_invalid_column_number
    {"HV004", StatusCode::kFatal},  // fdw_invalid_data_type
    {"HV006", StatusCode::kFatal},  // fdw_invalid_data_type_descriptors
    {"HV091", StatusCode::kFatal},  // fdw_invalid_descriptor_field_identifier
    {"HV00B", StatusCode::kFatal},  // fdw_invalid_handle
    {"HV00C", StatusCode::kFatal},  // fdw_invalid_option_index
    {"HV00D", StatusCode::kFatal},  // fdw_invalid_option_name
    {"HV090", StatusCode::kFatal},  // fdw_invalid_string_length_or_buffer_length
    {"HV00A", StatusCode::kFatal},  // fdw_invalid_string_format
    {"HV009", StatusCode::kFatal},  // fdw_invalid_use_of_null_pointer
    {"HV014", StatusCode::kFatal},  // fdw_too_many_handles
    {"HV001", StatusCode::kFatal},  // fdw_out_of_memory
    {"HV00P", StatusCode::kFatal},  // fdw_no_schemas
    {"HV00J", StatusCode::kFatal},  // fdw_option_name_not_found
    {"HV00K", StatusCode::kFatal},  // fdw_reply_handle
    {"HV00Q", StatusCode::kFatal},  // fdw_schema_not_found
    {"HV00R", StatusCode::kFatal},  // fdw_table_not_found
    {"HV00L", StatusCode::kFatal},  // fdw_unable_to_create_execution
    {"HV00M", StatusCode::kFatal},  // fdw_unable_to_create_reply
    {"HV00N", StatusCode::kFatal},  // fdw_unable_to_establish_connection
    {"P0000", StatusCode::kFatal},  // plpgsql_error
    {"P0001", StatusCode::kFatal},  // raise_exception
    {"P0002", StatusCode::kFatal},  // no_data_found
    {"P0003", StatusCode::kFatal},  // too_many_rows
    {"P0004", StatusCode::kFatal},  // assert_failure
    {"XX000", StatusCode::kFatal},  // internal_error: internal error: a server bug or corruption
    {"XX001", StatusCode::kFatal},  // data_corrupted: data corrupted: do not keep writing
    {"XX002", StatusCode::kFatal},  // index_corrupted
};

TEST(SqlStateClassifier, EveryCodeOfPostgreSql15) {
  for (const SqlStateCase& c : kSqlStateCases) {
    EXPECT_EQ(StatusCodeName(pg::ClassifySqlState(c.sqlstate)), StatusCodeName(c.kind))
        << c.sqlstate;
  }
}

TEST(SqlStateClassifier, CodesNotInTheList) {
  // No SQLSTATE at all: libpq failed before the server answered.
  EXPECT_EQ(pg::ClassifySqlState(""), StatusCode::kRetryable);
  EXPECT_EQ(pg::ClassifySqlState("08"), StatusCode::kRetryable);
  // An unknown code in a known class follows its class; an unknown class is
  // kFatal: stopping loudly beats retrying blindly.
  EXPECT_EQ(pg::ClassifySqlState("08ZZZ"), StatusCode::kRetryable);
  EXPECT_EQ(pg::ClassifySqlState("22ZZZ"), StatusCode::kBadData);
  EXPECT_EQ(pg::ClassifySqlState("57P99"), StatusCode::kFatal);
  EXPECT_EQ(pg::ClassifySqlState("ZZ000"), StatusCode::kFatal);
}

}  // namespace
}  // namespace datatunnel
