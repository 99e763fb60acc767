//! Column-name classification: which kind of sensitive data does a column
//! hold, judging by its name and type alone?
//!
//! The name is cut into words (snake_case, camelCase, PascalCase, kebab,
//! `UPPER_CASE`, letter/digit boundaries; accents folded: `prénom` →
//! `prenom`, `straße` → `strasse`). Every run of up to five consecutive words
//! is glued together and looked up in a dictionary of terms in English,
//! German, French, Spanish, Italian, Dutch and Portuguese (`e_mail` →
//! `email`, `date_of_birth` → `dateofbirth`, `Telefonnummer`); the longest
//! matching term wins (`email_address` is an e-mail, not an address;
//! `ip_address` an IP). A word outside the matched term that marks metadata
//! about the value (`email_verified`, `phone_count`, `password_changed_at`,
//! `token_type`, `address_id`, `card_last4`) cancels the match.
//!
//! The type must be able to hold the kind: a `bool` or `timestamptz` column
//! named like PII is not PII text; dates of birth may be `date`/`timestamp`;
//! numbers (phone, SSN, card, account, national id, postal code) may be
//! integers or numeric; `inet` is always an IP address; `bytea` may hold
//! any of them. Arrays, ranges and multiranges of dates and timestamps may
//! hold dates of birth.
//!
//! **Bare `name`** (and `nom`, `nome`, `nombre`, `naam`) is ambiguous: a
//! product, a company or a person. It is a person's name only when the
//! column or the table says so: `customer_name`, `contact_nom`, or a bare
//! `name` in a table such as `users`, `customers`, `employees`, `kunden`,
//! `clientes` (see [`classify_column_in`]). `username`/`user_name` is a login
//! handle, not classified.

use crate::Kind;

/// Broad type families, from a PostgreSQL type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeFamily {
    Text,
    Json,
    Xml,
    TextArray,
    Date,
    Timestamp,
    /// Arrays of dates or timestamps.
    DateArray,
    /// Ranges and multiranges of dates or timestamps, and their arrays.
    DateRange,
    Integer,
    Inet,
    Bytea,
    Other,
}

/// `text`, `character varying(20)`, `pg_catalog.int4`, `_text`, `text[]`,
/// `timestamp with time zone` … → family.
pub(crate) fn type_family(pg_type: &str) -> TypeFamily {
    let t = pg_type.trim().to_ascii_lowercase();
    let t = t.strip_prefix("pg_catalog.").unwrap_or(&t);
    let t = t.strip_prefix("public.").unwrap_or(t);
    let (array, t) = match (t.strip_suffix("[]"), t.strip_prefix('_')) {
        (Some(inner), _) => (true, inner.trim()),
        (None, Some(inner)) => (true, inner),
        _ => (false, t),
    };
    let base = t.split('(').next().unwrap_or(t).trim();
    let fam = match base {
        "text" | "varchar" | "character varying" | "bpchar" | "character" | "char" | "name"
        | "citext" | "unknown" | "" => TypeFamily::Text,
        "json" | "jsonb" => TypeFamily::Json,
        "xml" => TypeFamily::Xml,
        "date" => TypeFamily::Date,
        "timestamp"
        | "timestamptz"
        | "timestamp with time zone"
        | "timestamp without time zone" => TypeFamily::Timestamp,
        "int2" | "int4" | "int8" | "smallint" | "integer" | "int" | "bigint" | "numeric"
        | "decimal" => TypeFamily::Integer,
        "inet" => TypeFamily::Inet,
        "bytea" => TypeFamily::Bytea,
        "daterange" | "tsrange" | "tstzrange" | "datemultirange" | "tsmultirange"
        | "tstzmultirange" => TypeFamily::DateRange,
        _ => TypeFamily::Other,
    };
    match (array, fam) {
        (false, f) => f,
        (true, TypeFamily::Text | TypeFamily::Json) => TypeFamily::TextArray,
        (true, TypeFamily::Date | TypeFamily::Timestamp) => TypeFamily::DateArray,
        (true, TypeFamily::DateRange) => TypeFamily::DateRange,
        (true, _) => TypeFamily::Other,
    }
}

fn type_allows(fam: TypeFamily, kind: Kind) -> bool {
    match fam {
        TypeFamily::Text | TypeFamily::Json | TypeFamily::Xml | TypeFamily::TextArray => true,
        TypeFamily::Date
        | TypeFamily::Timestamp
        | TypeFamily::DateArray
        | TypeFamily::DateRange => kind == Kind::DateOfBirth,
        TypeFamily::Integer => matches!(
            kind,
            Kind::Phone
                | Kind::Ssn
                | Kind::Card
                | Kind::BankAccount
                | Kind::NationalId
                | Kind::PostalCode
        ),
        TypeFamily::Inet => kind == Kind::IpAddress,
        // bytes can hold any text: `email bytea`, `email::bytea`
        TypeFamily::Bytea => true,
        TypeFamily::Other => false,
    }
}

/// What a dictionary term means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Pii(Kind),
    /// `name`, `nom`, `nome`, `nombre`, `naam`: a person only in context.
    AmbiguousName,
    /// A longer term that is known not to be PII (`macaddress`, `webaddress`).
    NotPii,
}

fn term(s: &str) -> Option<Hit> {
    use Hit::*;
    use Kind::*;
    Some(match s {
        // e-mail
        "email" | "emailaddress" | "emailaddr" | "mail" | "mailaddress" | "courriel" | "correo"
        | "correoelectronico" | "emailadresse" | "mailadresse" | "emailadres" | "mailadres"
        | "adresseemail" | "adressemail" | "indirizzoemail" | "posta" | "postaelettronica"
        | "mailid" => Pii(Email),
        // phone
        "phone" | "phonenumber" | "phoneno" | "phonenum" | "phonenr" | "telephone"
        | "telephonenumber" | "tel" | "telno" | "telnr" | "telnum" | "telefon"
        | "telefonnummer" | "telefono" | "telefone" | "telefoon" | "telefoonnummer" | "mobile"
        | "mobilephone" | "mobilenumber" | "mobileno" | "mobil" | "mobilnummer" | "mobiel"
        | "movil" | "cell" | "cellphone" | "cellnumber" | "cellular" | "cellulare" | "handy"
        | "handynummer" | "fax" | "faxnumber" | "faxnummer" | "gsm" | "msisdn"
        | "numerotelephone" | "numerodetelephone" | "numerotelefono" | "numerodetelefono"
        | "numerotelefone" | "portable" | "contactnumber" => Pii(Phone),
        // US SSN
        "ssn" | "socialsecuritynumber" | "socialsecurityno" | "socialsecurity" | "socsec" => {
            Pii(Ssn)
        }
        // cards
        "pan"
        | "cardnumber"
        | "cardno"
        | "cardnum"
        | "cardnr"
        | "creditcard"
        | "creditcardnumber"
        | "creditcardno"
        | "creditcardnum"
        | "ccnumber"
        | "ccnum"
        | "ccno"
        | "ccnr"
        | "debitcard"
        | "debitcardnumber"
        | "primaryaccountnumber"
        | "kreditkarte"
        | "kreditkartennummer"
        | "kartennummer"
        | "numerocarte"
        | "numerodecarte"
        | "cartebancaire"
        | "cartedecredit"
        | "tarjeta"
        | "numerotarjeta"
        | "numerodetarjeta"
        | "tarjetadecredito"
        | "tarjetacredito"
        | "cartadicredito"
        | "numerocarta"
        | "creditcardnummer"
        | "kaartnummer"
        | "numerocartao"
        | "cartaodecredito" => Pii(Card),
        "cvv"
        | "cvc"
        | "cvn"
        | "cid"
        | "securitycode"
        | "cardsecuritycode"
        | "cardverificationvalue"
        | "cardverificationcode"
        | "pruefziffer" => Pii(Secret),
        // bank
        "iban" | "ibannumber" | "ibancode" | "ibannr" => Pii(Iban),
        "accountnumber" | "accountno" | "acctnumber" | "acctno" | "accountnum" | "bankaccount"
        | "bankaccountnumber" | "bankaccountno" | "routingnumber" | "sortcode" | "kontonummer"
        | "bankkonto" | "rekeningnummer" | "bankrekening" | "numerocuenta" | "numerodecuenta"
        | "cuentabancaria" | "contocorrente" | "numeroconto" | "numerodecompte"
        | "comptebancaire" | "contabancaria" => Pii(BankAccount),
        // network
        "ip" | "ipaddress" | "ipaddr" | "ipv4" | "ipv6" | "clientip" | "remoteip"
        | "remoteaddr" | "remoteaddress" | "sourceip" | "srcip" | "userip" | "ipadresse"
        | "ipadres" | "indirizzoip" | "direccionip" | "adresseip" | "clientaddr" => Pii(IpAddress),
        "macaddress" | "macaddr" | "webaddress" | "walletaddress" | "contractaddress"
        | "serveraddress" | "bindaddress" | "listenaddress" | "hostaddress" | "ipcount"
        | "tokenizer" | "tokens" | "passwordpolicy" | "passwordencryption" | "mailserver"
        | "mailhost" | "mailtemplate" | "emailtemplate" | "phonetic" | "pancake" => NotPii,
        // credentials
        "password" | "passwd" | "pwd" | "pass" | "pw" | "passphrase" | "passwort" | "kennwort"
        | "motdepasse" | "mdp" | "contrasena" | "contrasenya" | "clave" | "wachtwoord"
        | "senha" | "parolachiave" | "userpassword" | "pin" | "pincode" => Pii(Password),
        "passwordhash" | "hashedpassword" | "passwordhashed" | "passworddigest"
        | "encryptedpassword" | "cryptedpassword" | "pwhash" | "pwdhash" | "passhash"
        | "passwordcrypt" | "hashpassword" | "passwordenc" | "rolpassword" => Pii(PasswordHash),
        "apikey"
        | "apitoken"
        | "accesstoken"
        | "refreshtoken"
        | "authtoken"
        | "bearertoken"
        | "sessiontoken"
        | "idtoken"
        | "token"
        | "resettoken"
        | "passwordresettoken"
        | "confirmationtoken"
        | "verificationtoken"
        | "accesskey"
        | "accesskeyid"
        | "oauthtoken"
        | "sessionkey"
        | "sessionid"
        | "authkey"
        | "apiaccesskey"
        | "personalaccesstoken"
        | "pat"
        | "githubtoken"
        | "slacktoken"
        | "webhookurl" => Pii(ApiKey),
        "secret" | "clientsecret" | "secretkey" | "apisecret" | "signingkey" | "encryptionkey"
        | "sharedsecret" | "otpsecret" | "totpsecret" | "mfasecret" | "twofactorsecret"
        | "salt" | "passwordsalt" | "webhooksecret" | "secretaccesskey" | "masterkey"
        | "recoverycodes" | "backupcodes" | "seedphrase" | "mnemonic" => Pii(Secret),
        "privatekey" | "privkey" | "sshkey" | "sshprivatekey" | "pemkey" | "tlskey"
        | "signingprivatekey" => Pii(PrivateKey),
        // names
        "firstname" | "lastname" | "fullname" | "givenname" | "familyname" | "surname"
        | "middlename" | "maidenname" | "forename" | "displayname" | "legalname" | "namefirst"
        | "namelast" | "namefull" | "contactname" | "customername" | "personname"
        | "cardholder" | "cardholdername" | "accountholder" | "accountholdername"
        | "recipientname" | "sendername" | "billingname" | "shippingname" | "beneficiaryname"
        | "patientname" | "employeename" | "vorname" | "nachname" | "familienname"
        | "geburtsname" | "vollername" | "rufname" | "prenom" | "nomdefamille" | "nomfamille"
        | "nomcomplet" | "nomdenaissance" | "apellido" | "apellidos" | "primerapellido"
        | "segundoapellido" | "nombrecompleto" | "nombrepila" | "cognome" | "nomecompleto"
        | "achternaam" | "voornaam" | "tussenvoegsel" | "volledigenaam" | "sobrenome"
        | "primeironome" | "ultimonome" => Pii(Name),
        "name" | "nom" | "nome" | "nombre" | "naam" => AmbiguousName,
        "username" | "loginname" | "accountname" | "screenname" | "hostname" | "filename"
        | "dbname" | "tablename" | "columnname" | "nickname" | "productname" | "companyname"
        | "firmenname" | "nomentreprise" | "brandname" | "domainname" | "servername"
        | "pathname" | "typename" | "classname" | "keyname" | "rolename" | "groupname"
        | "teamname" | "orgname" | "organizationname" | "projectname" | "appname"
        | "servicename" => NotPii,
        // addresses
        "address" | "addr" | "addressline" | "streetaddress" | "street" | "streetname"
        | "streetline" | "homeaddress" | "mailingaddress" | "postaladdress"
        | "residentialaddress" | "housenumber" | "housename" | "buildingnumber" | "adresse"
        | "anschrift" | "strasse" | "strassenname" | "hausnummer" | "wohnadresse"
        | "wohnanschrift" | "direccion" | "domicilio" | "calle" | "indirizzo" | "adres"
        | "straat" | "straatnaam" | "huisnummer" | "endereco" | "morada" | "logradouro" | "rue"
        | "adressepostale" | "numerorue" => Pii(Address),
        // postal codes
        "zip" | "zipcode" | "postalcode" | "postcode" | "plz" | "postleitzahl" | "codepostal"
        | "codigopostal" | "postcodes" | "cep" => Pii(PostalCode),
        // dates of birth
        "dob" | "birthdate" | "dateofbirth" | "birthday" | "birthdt" | "bday" | "geburtsdatum"
        | "geburtstag" | "datenaissance" | "datedenaissance" | "fechanacimiento"
        | "fechadenacimiento" | "datanascita" | "datadinascita" | "geboortedatum"
        | "datanascimento" | "datadenascimento" | "birthyear" | "yearofbirth" | "geburtsjahr" => {
            Pii(DateOfBirth)
        }
        // national ids
        "taxid"
        | "taxnumber"
        | "taxno"
        | "tin"
        | "nationalid"
        | "nationalidentifier"
        | "nationalidnumber"
        | "nationalinsurancenumber"
        | "nino"
        | "nin"
        | "passport"
        | "passportnumber"
        | "passportno"
        | "passportnr"
        | "driverslicense"
        | "driverlicense"
        | "driverslicence"
        | "driverlicence"
        | "driverslicensenumber"
        | "idnumber"
        | "idcard"
        | "identitycard"
        | "identitynumber"
        | "personalnumber"
        | "personnummer"
        | "steuerid"
        | "steuernummer"
        | "steueridentifikationsnummer"
        | "sozialversicherungsnummer"
        | "versicherungsnummer"
        | "personalausweis"
        | "personalausweisnummer"
        | "ausweisnummer"
        | "reisepassnummer"
        | "codicefiscale"
        | "nif"
        | "nie"
        | "dni"
        | "nir"
        | "insee"
        | "numerosecu"
        | "numerosecuritesociale"
        | "securitesociale"
        | "bsn"
        | "burgerservicenummer"
        | "cpf"
        | "curp"
        | "aadhaar"
        | "pesel"
        | "socialinsurancenumber"
        | "sin"
        | "numeroidentificacion"
        | "documentoidentidad"
        | "cartaidentita"
        | "cartedidentite"
        | "numeropasseport"
        | "numeropasaporte"
        | "numeropassaporto"
        | "paspoortnummer" => Pii(NationalId),
        _ => return None,
    })
}

/// Words that describe a value instead of being it: a column containing
/// one of them (outside the matched term) is metadata, not PII.
fn is_metadata_word(w: &str) -> bool {
    matches!(
        w,
        "verified"
            | "verify"
            | "verification"
            | "validated"
            | "valid"
            | "validation"
            | "confirmed"
            | "count"
            | "counts"
            | "cnt"
            | "total"
            | "enabled"
            | "disabled"
            | "enable"
            | "flag"
            | "flags"
            | "is"
            | "has"
            | "at"
            | "changed"
            | "updated"
            | "created"
            | "modified"
            | "deleted"
            | "expires"
            | "expiry"
            | "expired"
            | "expiration"
            | "exp"
            | "ttl"
            | "type"
            | "types"
            | "kind"
            | "status"
            | "format"
            | "fmt"
            | "policy"
            | "length"
            | "len"
            | "min"
            | "max"
            | "attempts"
            | "attempt"
            | "failures"
            | "failed"
            | "sent"
            | "optin"
            | "opt"
            | "consent"
            | "preference"
            | "preferences"
            | "template"
            | "domain"
            | "provider"
            | "hint"
            | "mask"
            | "masked"
            | "last4"
            | "lastfour"
            | "bin"
            | "brand"
            | "network"
            | "issuer"
            | "country"
            | "prefix"
            | "ext"
            | "extension"
            | "required"
            | "label"
            | "placeholder"
            | "regex"
            | "pattern"
            | "rule"
            | "mode"
            | "method"
            | "source"
            | "channel"
            | "frequency"
            | "visibility"
            | "visible"
            | "public"
            | "id"
            | "ids"
            | "uuid"
            | "guid"
            | "fk"
            | "ref"
            | "algorithm"
            | "algo"
            | "version"
            | "strength"
            | "score"
            | "sort"
            | "index"
            | "idx"
            | "size"
            | "limit"
            | "quota"
            | "bounce"
            | "bounced"
            | "unsubscribed"
            | "subscribed"
            | "marketing"
            | "notifications"
            | "notify"
            | "encrypted"
            | "scope"
            | "scopes"
            | "lookup"
            | "reminder"
            | "rotation"
            | "rotated"
            | "age"
    )
}

/// Words next to an ambiguous `name` that make it a person's name.
fn is_person_word(w: &str) -> bool {
    matches!(
        w,
        "customer"
            | "client"
            | "contact"
            | "person"
            | "employee"
            | "patient"
            | "member"
            | "holder"
            | "recipient"
            | "sender"
            | "billing"
            | "shipping"
            | "beneficiary"
            | "guest"
            | "passenger"
            | "driver"
            | "owner"
            | "student"
            | "applicant"
            | "emergency"
            | "parent"
            | "spouse"
            | "legal"
            | "maiden"
            | "real"
            | "birth"
            | "buyer"
            | "payer"
            | "payee"
            | "subscriber"
            | "candidate"
            | "tenant"
            | "kunde"
            | "kunden"
            | "mitarbeiter"
            | "cliente"
            | "empleado"
            | "paciente"
            | "dipendente"
            | "utente"
            | "klant"
            | "medewerker"
            | "salarie"
            | "personne"
            | "full"
            | "first"
            | "last"
            | "given"
            | "family"
            | "middle"
            | "complete"
    )
}

/// Table names whose bare `name` column is a person's name.
fn is_person_table(word: &str) -> bool {
    let w = word.strip_suffix('s').unwrap_or(word);
    matches!(
        w,
        "user"
            | "customer"
            | "client"
            | "person"
            | "people"
            | "employee"
            | "staff"
            | "member"
            | "contact"
            | "patient"
            | "student"
            | "teacher"
            | "author"
            | "profile"
            | "applicant"
            | "candidate"
            | "guest"
            | "passenger"
            | "driver"
            | "subscriber"
            | "owner"
            | "buyer"
            | "account_holder"
            | "kunde"
            | "kunden"
            | "mitarbeiter"
            | "person_"
            | "personen"
            | "benutzer"
            | "nutzer"
            | "utilisateur"
            | "personne"
            | "salarie"
            | "cliente"
            | "usuario"
            | "empleado"
            | "paciente"
            | "utente"
            | "dipendente"
            | "klant"
            | "klanten"
            | "gebruiker"
            | "medewerker"
            | "leerling"
            | "persona"
            | "persone"
            | "alumno"
            | "estudiante"
    )
}

fn fold_char(c: char, out: &mut String) {
    let folded = match c {
        'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' | 'À' | 'Á' | 'Â' | 'Ä' | 'Ã' | 'Å' => 'a',
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
        'ò' | 'ó' | 'ô' | 'ö' | 'õ' | 'Ò' | 'Ó' | 'Ô' | 'Ö' | 'Õ' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
        'ñ' | 'Ñ' => 'n',
        'ç' | 'Ç' => 'c',
        'ß' => {
            out.push_str("ss");
            return;
        }
        _ => c,
    };
    out.push(folded);
}

/// Cut an identifier into lower-case ASCII words.
pub(crate) fn split_words(name: &str) -> Vec<String> {
    let mut folded = String::with_capacity(name.len());
    for c in name.chars() {
        fold_char(c, &mut folded);
    }
    let chars: Vec<char> = folded.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(&prev) = cur.chars().last().as_ref() {
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            let camel = prev.is_ascii_lowercase() && c.is_ascii_uppercase();
            // `HTTPServer` → HTTP | Server
            let acronym_end =
                prev.is_ascii_uppercase() && c.is_ascii_uppercase() && next.is_ascii_lowercase();
            let digit_edge = prev.is_ascii_digit() != c.is_ascii_digit();
            if camel || acronym_end || digit_edge {
                words.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words.into_iter().map(|w| w.to_ascii_lowercase()).collect()
}

fn lookup(s: &str) -> Option<Hit> {
    term(s)
        .or_else(|| s.strip_suffix('s').and_then(term))
        .or_else(|| s.strip_suffix("es").and_then(term))
}

/// Stems for compound words not in the dictionary (`homephone`,
/// `dbpassword`, `Telefonnr`, `workemail`, `csrftoken`).
fn stem(word: &str) -> Option<Hit> {
    use Kind::*;
    let w = word;
    if w.len() < 6 {
        return None;
    }
    let hit = if w.ends_with("password") || w.ends_with("passwort") || w.ends_with("passwd") {
        Password
    } else if w.ends_with("email") || w.ends_with("emails") {
        Email
    } else if w.ends_with("phone") || w.starts_with("telefon") || w.starts_with("telephon") {
        Phone
    } else if w.ends_with("token") {
        ApiKey
    } else if w.starts_with("geburtsdat") {
        DateOfBirth
    } else if w.ends_with("address") || w.ends_with("adresse") || w.ends_with("strasse") {
        Address
    } else if w.starts_with("kreditkart") {
        Card
    } else {
        return None;
    };
    Some(Hit::Pii(hit))
}

/// Classify a column by its name and type, without knowing its table.
/// See the module documentation for the rules; a bare `name` is `None`
/// here (use [`classify_column_in`] with the table for context).
pub fn classify_column(column: &str, pg_type: &str) -> Option<Kind> {
    classify_column_in(None, column, pg_type)
}

/// Classify a column by its name, its type and, when known, its table's
/// name (which decides whether a bare `name` is a person's name).
pub fn classify_column_in(table: Option<&str>, column: &str, pg_type: &str) -> Option<Kind> {
    let fam = type_family(pg_type);
    if fam == TypeFamily::Inet {
        // an inet column is an IP address whatever its name
        return Some(Kind::IpAddress);
    }
    if fam == TypeFamily::Other {
        return None;
    }
    let words = split_words(column);
    let words = &words[..words.len().min(12)];
    // longest term over runs of ≤ 5 consecutive words
    let mut best: Option<(usize, usize, usize, Hit)> = None; // (len, i, j, hit)
    let mut glued = String::new();
    for i in 0..words.len() {
        glued.clear();
        for (j, word) in words.iter().enumerate().take(i + 5).skip(i) {
            glued.push_str(word);
            let hit = lookup(&glued).or_else(|| if i == j { stem(&glued) } else { None });
            if let Some(hit) = hit {
                if best.is_none_or(|(len, ..)| glued.len() > len) {
                    best = Some((glued.len(), i, j, hit));
                }
            }
        }
    }
    let (_, i, j, hit) = best?;
    let outside = words[..i].iter().chain(&words[j + 1..]);
    if outside.clone().any(|w| is_metadata_word(w)) {
        return None;
    }
    let kind = match hit {
        Hit::Pii(k) => k,
        Hit::NotPii => return None,
        Hit::AmbiguousName => {
            let person_table = table.is_some_and(|t| {
                let tw = split_words(t);
                tw.last().is_some_and(|w| is_person_table(w)) || is_person_table(&tw.concat())
            });
            if person_table || outside.clone().any(|w| is_person_word(w)) {
                Kind::Name
            } else {
                return None;
            }
        }
    };
    type_allows(fam, kind).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is(kind: Kind, cols: &[&str]) {
        for c in cols {
            assert_eq!(classify_column(c, "text"), Some(kind), "{c}");
        }
    }

    #[test]
    fn splits_naming_styles() {
        assert_eq!(split_words("emailAddress"), ["email", "address"]);
        assert_eq!(split_words("EMAIL_ADDR"), ["email", "addr"]);
        assert_eq!(
            split_words("BillingCardNumber"),
            ["billing", "card", "number"]
        );
        assert_eq!(split_words("address-line1"), ["address", "line", "1"]);
        assert_eq!(split_words("HTTPServerIP"), ["http", "server", "ip"]);
        assert_eq!(split_words("Straße"), ["strasse"]);
        assert_eq!(split_words("prénom"), ["prenom"]);
    }

    #[test]
    fn english_names() {
        is(
            Kind::Email,
            &[
                "email",
                "customer_email",
                "emailAddress",
                "EMAIL_ADDR",
                "e_mail",
                "e-mail",
                "WorkEmail",
                "emails",
            ],
        );
        is(
            Kind::Phone,
            &[
                "phone",
                "phone_number",
                "mobile",
                "tel",
                "cellPhone",
                "home_phone",
                "PhoneNo",
                "fax",
            ],
        );
        is(Kind::Ssn, &["ssn", "social_security_number", "SSN"]);
        is(
            Kind::Card,
            &[
                "billing_card_number",
                "cc_num",
                "pan",
                "creditCardNumber",
                "card_no",
            ],
        );
        is(Kind::Iban, &["iban", "IBAN", "payout_iban"]);
        is(
            Kind::DateOfBirth,
            &[
                "dob",
                "birth_date",
                "date_of_birth",
                "birthDate",
                "DateOfBirth",
            ],
        );
        is(
            Kind::Address,
            &[
                "street",
                "address_line1",
                "address_line_2",
                "billing_address",
                "streetAddress",
                "addr",
            ],
        );
        is(
            Kind::PostalCode,
            &["zip", "zip_code", "postal_code", "postcode"],
        );
        is(
            Kind::Name,
            &[
                "first_name",
                "last_name",
                "full_name",
                "firstName",
                "LastName",
                "surname",
                "customer_name",
            ],
        );
        is(
            Kind::Password,
            &["password", "passwd", "pwd", "db_password", "userPassword"],
        );
        is(
            Kind::PasswordHash,
            &["password_hash", "hashed_password", "encrypted_password"],
        );
        is(
            Kind::ApiKey,
            &[
                "api_key",
                "access_token",
                "refresh_token",
                "apiKey",
                "csrf_token",
                "token",
            ],
        );
        is(
            Kind::Secret,
            &["secret", "client_secret", "totp_secret", "cvv"],
        );
        is(
            Kind::PrivateKey,
            &["private_key", "privateKey", "ssh_private_key"],
        );
        is(
            Kind::IpAddress,
            &[
                "ip_address",
                "client_ip",
                "remote_addr",
                "ipv4",
                "last_login_ip",
            ],
        );
        is(
            Kind::NationalId,
            &[
                "tax_id",
                "passport_number",
                "national_id",
                "drivers_license",
            ],
        );
        is(
            Kind::BankAccount,
            &["account_number", "routing_number", "bank_account"],
        );
    }

    #[test]
    fn other_languages() {
        is(
            Kind::Email,
            &[
                "courriel",
                "correo_electronico",
                "e_mail_adresse",
                "indirizzo_email",
            ],
        );
        is(
            Kind::Phone,
            &[
                "telefon",
                "Telefonnummer",
                "telefono",
                "numero_de_telephone",
                "telefoonnummer",
                "handynummer",
                "cellulare",
            ],
        );
        is(
            Kind::Name,
            &[
                "nachname",
                "vorname",
                "prenom",
                "prénom",
                "cognome",
                "apellidos",
                "achternaam",
                "voornaam",
                "sobrenome",
                "nom_de_famille",
            ],
        );
        is(
            Kind::DateOfBirth,
            &[
                "geburtsdatum",
                "date_de_naissance",
                "fecha_de_nacimiento",
                "data_di_nascita",
                "geboortedatum",
                "data_nascimento",
            ],
        );
        is(
            Kind::Address,
            &[
                "adresse",
                "direccion",
                "dirección",
                "indirizzo",
                "straße",
                "strasse",
                "straat",
                "endereco",
                "anschrift",
            ],
        );
        is(
            Kind::NationalId,
            &[
                "codice_fiscale",
                "steuernummer",
                "numero_securite_sociale",
                "dni",
                "nif",
                "bsn",
                "burgerservicenummer",
            ],
        );
        is(
            Kind::PostalCode,
            &["plz", "postleitzahl", "code_postal", "codigo_postal"],
        );
        is(
            Kind::Card,
            &["kreditkartennummer", "numero_carte", "numero_tarjeta"],
        );
        is(
            Kind::Password,
            &[
                "passwort",
                "mot_de_passe",
                "contrasena",
                "wachtwoord",
                "senha",
            ],
        );
        is(Kind::BankAccount, &["kontonummer", "rekeningnummer"]);
    }

    #[test]
    fn metadata_is_not_pii() {
        for (c, t) in [
            ("email_verified", "bool"),
            ("email_verified", "text"),
            ("phone_count", "int4"),
            ("phone_count", "text"),
            ("password_changed_at", "timestamptz"),
            ("password_changed_at", "text"),
            ("token_count", "int4"),
            ("token_type", "text"),
            ("key_id", "text"),
            ("created_at", "timestamptz"),
            ("address_id", "int8"),
            ("card_last4", "text"),
            ("card_brand", "text"),
            ("card_exp", "text"),
            ("email_domain", "text"),
            ("is_email_public", "text"),
            ("mac_address", "text"),
            ("username", "text"),
            ("user_name", "text"),
            ("hostname", "text"),
            ("product_name", "text"),
            ("company_name", "text"),
            ("hotel", "text"),
            ("pancake_count", "int4"),
            ("password_policy", "text"),
            // `SHOW password_encryption`: psql's \password needs it.
            ("password_encryption", "text"),
            ("email_template", "text"),
            ("description", "text"),
            ("status", "text"),
            ("id", "int8"),
            ("sku", "text"),
        ] {
            assert_eq!(classify_column(c, t), None, "{c} {t}");
        }
    }

    #[test]
    fn type_matters() {
        assert_eq!(classify_column("email", "bool"), None);
        assert_eq!(classify_column("email", "int4"), None);
        assert_eq!(
            classify_column("email", "character varying(255)"),
            Some(Kind::Email)
        );
        assert_eq!(classify_column("email", "citext"), Some(Kind::Email));
        assert_eq!(classify_column("emails", "text[]"), Some(Kind::Email));
        assert_eq!(classify_column("phone", "int8"), Some(Kind::Phone));
        assert_eq!(
            classify_column("birth_date", "date"),
            Some(Kind::DateOfBirth)
        );
        assert_eq!(classify_column("first_name", "date"), None);
        assert_eq!(classify_column("last_seen", "inet"), Some(Kind::IpAddress));
        assert_eq!(
            classify_column("private_key", "bytea"),
            Some(Kind::PrivateKey)
        );
        assert_eq!(classify_column("ssn", "uuid"), None);
        assert_eq!(classify_column("address", "jsonb"), Some(Kind::Address));
    }

    #[test]
    fn bare_name_needs_person_context() {
        assert_eq!(classify_column("name", "text"), None);
        assert_eq!(classify_column_in(Some("products"), "name", "text"), None);
        assert_eq!(
            classify_column_in(Some("users"), "name", "text"),
            Some(Kind::Name)
        );
        assert_eq!(
            classify_column_in(Some("Customers"), "name", "varchar"),
            Some(Kind::Name)
        );
        assert_eq!(
            classify_column_in(Some("kunden"), "name", "text"),
            Some(Kind::Name)
        );
        assert_eq!(
            classify_column_in(Some("clients"), "nom", "text"),
            Some(Kind::Name)
        );
        assert_eq!(classify_column("contact_name", "text"), Some(Kind::Name));
        assert_eq!(classify_column("nome", "text"), None);
    }
}
